"""The `rewards` package: real math-verify, real worker pool, the values each reward documents."""

import errno
import logging
import math
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rewards.accuracy
import rewards.pool
from rewards import REWARDS, get_reward
from rewards.accuracy import extract_answer, verify_one
from rewards.pool import BoundedPool

ROOT = Path(__file__).resolve().parents[1]

THINK_OK = "<think>\nSix times seven is 42.\n</think>\nThe answer is \\boxed{42}."
NO_THINK_OK = "The answer is \\boxed{42}."


@pytest.fixture(scope="module")
def accuracy():
    return get_reward("accuracy", workers=2, timeout=2, batch_timeout=30.0)


def test_correct_answers_score_1_in_both_modes_and_both_completion_forms(accuracy):
    chat = [[{"role": "assistant", "content": text}] for text in (THINK_OK, NO_THINK_OK)]
    completions = [THINK_OK, NO_THINK_OK] + chat
    assert accuracy(completions, answer=["42"] * 4, mode=["think", "no_think"] * 2) == [1.0] * 4


def test_an_answer_only_inside_the_reasoning_scores_0(accuracy):
    completions = [
        "<think>\nIt is \\boxed{42}.\n</think>\nI am not sure.",
        "<think>\nIt is 42, so \\boxed{42}",  # never closed: all of it is reasoning
        "<think>\nmaybe 42\n</think>\n",
        "The answer is \\boxed{41}. <think>\nno wait, \\boxed{42}",  # reopened block after the answer
    ]
    assert accuracy(completions, answer=["42"] * 4) == [0.0] * 4


def test_wrong_answers_score_0_and_the_last_boxed_after_the_block_wins(accuracy):
    completions = [
        "<think>\nhmm\n</think>\nThe answer is \\boxed{41}.",
        "\\boxed{42} is what I first thought, but the answer is \\boxed{41}.",
        "\\boxed{41} is what I first thought, but the answer is \\boxed{42}.",
        "<think>\n\\boxed{41}\n</think>\nThe answer is \\boxed{42}.",
    ]
    assert accuracy(completions, answer=["42"] * 4) == [0.0, 0.0, 1.0, 1.0]


def test_latex_gold_and_equivalent_forms(accuracy):
    completions = ["\\boxed{0.5}", "\\boxed{\\frac{2}{4}}", "The answer is 1/2.", "\\boxed{0.6}", "\\boxed{\\sqrt 2}"]
    golds = ["\\frac{1}{2}"] * 4 + ["\\sqrt{2}"]
    assert accuracy(completions, answer=golds) == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_comma_numbers_and_the_last_number_fallback(accuracy):
    completions = ["\\boxed{1234}", "\\boxed{1,234}", "So the total is 1,234.", "So it is 1234 apples.", "Total: 1,235"]
    assert accuracy(completions, answer=["1,234", "1234", "1234", "1,234", "1,234"]) == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert accuracy(["It is 72.", "It is 72."], answer=[72, "72"]) == [1.0, 1.0]  # int gold from a dataset column


def test_without_a_box_the_answer_is_read_as_math_verify_reads_latex(accuracy):
    """A digit regex read `$2^{10}$` as 10 and `$\\frac{1}{2}$` as 2."""
    completions = ["<think>\nPowers of two.\n</think>\nThe answer is $2^{10}$.", "So it is $\\frac{1}{2}$."]
    assert accuracy(completions, answer=["1024", "0.5"]) == [1.0, 1.0]


def test_the_last_box_is_found_far_before_the_end(accuracy):
    check = "Check: 6 x 7 = 42, and 42 - 2 = 40. " * 150  # ~5 KB after the box, its last number 40
    completion = f"<think>\nSix sevens.\n</think>\nThe answer is \\boxed{{42}}.\n\n{check}"
    assert len(completion) - completion.index("\\boxed") > 5000
    assert accuracy([completion], answer=["42"]) == [1.0]


def test_a_unicode_minus_is_a_minus(accuracy):
    completions = ["The answer is \u22127.", "\\boxed{\u22127}", "The answer is \u22127."]
    assert accuracy(completions, answer=["-7", "-7", "7"]) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("hostile", [4, 16])
def test_hostile_rows_cannot_stretch_a_batch_past_its_deadline(accuracy, caplog, hostile):
    """Each hostile row used to hold a worker for up to three math-verify timeouts, one batch after another."""
    reward = get_reward("accuracy", workers=2, timeout=1)  # batch_timeout defaults to timeout
    assert accuracy([NO_THINK_OK], answer=["42"]) == [1.0]  # the shared pool is started (outside the bound)
    completions = ["\\boxed{9^{9^{9^{9}}}}"] * hostile + [THINK_OK, NO_THINK_OK, "\\boxed{41}"] * 4
    logged = Metrics()
    with caplog.at_level(logging.INFO, logger="rewards"):
        start = time.monotonic()
        values = reward(completions, answer=["7"] * hostile + ["42"] * 12, log_metric=logged)
        elapsed = time.monotonic() - start
    assert elapsed < 1.5  # timeout + 0.5 s
    assert values == [0.0] * hostile + [1.0, 1.0, 0.0] * 4
    assert dict(logged)["rewards/accuracy/timeouts"] == hostile
    assert [r.getMessage() for r in caplog.records] == [
        f"rewards: accuracy: {hostile} of {hostile + 12} rows got no result within the 1.0 s batch bound "
        "(or their worker died); scored 0"
    ]
    start = time.monotonic()
    assert reward([THINK_OK, "\\boxed{41}"] * 4, answer=["42"] * 8) == [1.0, 0.0] * 4  # the workers are free again
    assert time.monotonic() - start < 0.5


class Metrics(list):
    """Stands in for TRL's `log_metric` hook: records (name, value)."""

    def __call__(self, name, value):
        self.append((name, value))


def test_unparseable_gold_gives_none_and_is_counted_in_every_batch(accuracy, caplog):
    logged = Metrics()
    with caplog.at_level(logging.WARNING, logger="rewards.accuracy"):
        values = accuracy([NO_THINK_OK] * 5, answer=["{", "", None, "\\frac{1}{", "42"], log_metric=logged)
        assert accuracy([NO_THINK_OK], answer=["{"], log_metric=logged) == [None]
    assert values == [None, None, None, None, 1.0]
    warnings = [r.message for r in caplog.records if "does not parse" in r.message]
    assert len(warnings) == 2 and "4 of 5 rows" in warnings[0] and "1 of 1 rows" in warnings[1]
    assert [v for k, v in logged if k == "rewards/accuracy/unparseable_gold"] == [4.0, 1.0]
    assert [v for k, v in logged if k == "rewards/accuracy/timeouts"] == [0.0, 0.0]


def test_an_error_while_parsing_the_gold_gives_none_not_0(monkeypatch):
    def broken_parser(*args, **kwargs):
        raise RuntimeError("parser bug")

    rewards.accuracy._parse_gold.cache_clear()
    monkeypatch.setattr(rewards.accuracy, "parse", broken_parser)
    try:
        assert verify_one("42", "\\boxed{42}", 2) is None  # the gold's fault, not the completion's
    finally:
        rewards.accuracy._parse_gold.cache_clear()


def test_serial_path_matches_the_pool(accuracy):
    completions = [THINK_OK, NO_THINK_OK, "<think>\n\\boxed{42}\n</think>\nno idea", "\\boxed{0.5}", "x"]
    golds = ["42", "42", "42", "\\frac{1}{2}", "{"]
    serial = get_reward("accuracy", workers=0, timeout=2)
    assert serial(completions, answer=golds) == accuracy(completions, answer=golds) == [1.0, 1.0, 0.0, 1.0, None]


def test_off_the_main_thread_the_pool_verifies_and_nothing_runs_unbounded(accuracy, caplog):
    """signal.alarm needs the main thread: the pool's workers have their own; without a pool, math-verify off the
    main thread could run forever (here `9^{9^{9^{9}}}` would), so those rows are not verified: None, and a warning."""
    out = {}
    serial = get_reward("accuracy", workers=0, timeout=2)

    def score_both():
        out.update(
            pool=accuracy([NO_THINK_OK], answer=["42"]),
            serial=serial([NO_THINK_OK, "\\boxed{9^{9^{9^{9}}}}"], answer=["42", "7"]),
        )

    # Started here: workers die with the thread that started them (PR_SET_PDEATHSIG), and this one ends.
    assert accuracy([NO_THINK_OK], answer=["42"]) == [1.0]
    with caplog.at_level(logging.WARNING, logger="rewards.accuracy"):
        thread = threading.Thread(target=score_both, daemon=True)
        thread.start()
        thread.join(30)
    assert not thread.is_alive()
    assert out == {"pool": [1.0], "serial": [None, None]}
    assert "2 rows not verified" in caplog.text


def test_a_batch_returns_at_its_bound_and_the_busy_worker_rejoins(accuracy, caplog):
    # math-verify's own timeout (3 s) is longer than the batch bound (1 s): only the pool's bound can cut it.
    hasty = get_reward("accuracy", workers=2, timeout=3, batch_timeout=1.0)
    assert accuracy([NO_THINK_OK], answer=["42"]) == [1.0]  # the shared pool is started (outside the bound)
    logged = Metrics()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rewards.accuracy"):
        values = hasty(["\\boxed{9^{9^{9^{9}}}}", NO_THINK_OK], answer=["7", "42"], log_metric=logged)
    elapsed = time.monotonic() - start
    assert values == [0.0, 1.0]
    assert 0.9 < elapsed < 2.5  # the bound, not the 3 s math-verify would have taken
    assert ("rewards/accuracy/timeouts", 1.0) in logged and "1 of 2 rows got no result" in caplog.text
    assert accuracy([THINK_OK, "\\boxed{41}"] * 4, answer=["42"] * 8) == [1.0, 0.0] * 4  # the pool still works


def test_a_row_that_times_out_keeps_none_when_its_gold_does_not_parse(accuracy):
    """Golds are checked ahead of the rows, so a row cut off by the deadline still knows its gold's verdict."""
    assert accuracy([NO_THINK_OK], answer=["42"]) == [1.0]  # started
    hasty = get_reward("accuracy", workers=2, timeout=3, batch_timeout=0.5)
    slow = ["\\boxed{9^{9^{9^{9}}}}"] * 100  # 100 x 20 ms of CPU in the first pass: more than the 0.5 s bound
    logged = Metrics()
    values = hasty(slow + [NO_THINK_OK], answer=["7"] * 100 + ["{"], log_metric=logged)
    assert values == [0.0] * 100 + [None]
    timeouts = dict(logged)["rewards/accuracy/timeouts"]
    assert 0 < timeouts <= 100 and dict(logged)["rewards/accuracy/unparseable_gold"] == 1.0


def test_a_worker_stuck_past_its_batch_is_killed_and_replaced():
    """A worker that no alarm frees (here: a plain sleep) is killed `stuck_after` seconds past the deadline."""
    pool = BoundedPool(1)
    try:
        assert pool.map(abs, [(-1,)], batch_timeout=60.0, default=None, stuck_after=1.0) == [1]  # started
        start = time.monotonic()
        assert pool.map(time.sleep, [(60,)], batch_timeout=0.5, default=None, stuck_after=0.5) == [None]
        assert time.monotonic() - start < 2.0  # the 0.5 s bound, not the 60 s sleep
        stuck = pool._workers[0].proc
        time.sleep(0.6)
        assert pool.map(abs, [(-3,), (4,)], batch_timeout=60.0, default=None, stuck_after=1.0) == [3, 4]
        assert stuck.poll() is not None and pool._workers[0].proc is not stuck
    finally:
        pool.close()


def test_a_worker_that_finished_after_its_batch_is_not_taken_for_stuck(caplog):
    """Its "done" waits unread in the pipe until the next batch, which must read it before it judges the worker."""
    pool = BoundedPool(1)
    try:
        assert pool.map(abs, [(-1,)], batch_timeout=60.0, default=None, stuck_after=1.0) == [1]  # started
        assert pool.map(time.sleep, [(0.3,)], batch_timeout=0.1, default="late", stuck_after=1.0) == ["late"]
        worker = pool._workers[0].proc
        time.sleep(1.5)  # finished at 0.3 s; now past stuck_after
        with caplog.at_level(logging.WARNING, logger="rewards.pool"):
            assert pool.map(abs, [(-2,)], batch_timeout=60.0, default=None, stuck_after=1.0) == [2]
        assert pool._workers[0].proc is worker and worker.poll() is None and "stayed busy" not in caplog.text
    finally:
        pool.close()


def test_a_worker_that_dies_mid_batch_costs_only_its_items():
    """A crash (here os._exit, as an OOM kill would) leaves the default for what it held; a new worker goes on."""
    pool = BoundedPool(1)
    try:
        assert pool.map(os._exit, [(3,)], batch_timeout=30.0, default=None, stuck_after=1.0) == [None]
        assert pool.map(abs, [(-1,), (-2,)], batch_timeout=30.0, default=None, stuck_after=1.0) == [1, 2]
    finally:
        pool.close()


def _no_process(*args, **kwargs):
    raise OSError(errno.EAGAIN, "Resource temporarily unavailable")  # fork at the process limit


def test_a_worker_that_cannot_start_costs_its_items_not_the_run(monkeypatch, caplog):
    """A replacement that cannot start (process limit, out of memory) leaves the pool short, never raises."""
    pool = BoundedPool(1)
    try:
        assert pool.map(abs, [(-1,)], batch_timeout=60.0, default=None, stuck_after=1.0) == [1]  # started
        monkeypatch.setattr(subprocess, "Popen", _no_process)
        with caplog.at_level(logging.ERROR, logger="rewards.pool"):
            assert pool.map(os._exit, [(3,)], batch_timeout=30.0, default=None, stuck_after=1.0) == [None]
            assert pool.map(abs, [(-1,)], batch_timeout=30.0, default=None, stuck_after=1.0) is None  # none left
        assert "could not start a math-verify worker" in caplog.text and pool.broken
    finally:
        pool.close()


def test_the_reward_scores_in_process_when_no_worker_can_start(monkeypatch):
    monkeypatch.setitem(rewards.pool._POOLS, 3, BoundedPool(3))  # a fresh pool, dropped again after the test
    monkeypatch.setattr(subprocess, "Popen", _no_process)
    reward = get_reward("accuracy", workers=3, timeout=2)
    assert reward([NO_THINK_OK, "\\boxed{41}"], answer=["42", "42"]) == [1.0, 0.0]  # main thread: alarms bound it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux-only")
def test_workers_are_memory_capped_and_die_with_a_killed_parent():
    """kill -9 of the trainer runs no clean-up; its worker, stuck mid-item (a sleep standing in for a C-level
    big-int power that ignores the closed pipe and alarms), is killed by the kernel."""
    script = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from rewards.pool import BoundedPool\n"
        "pool = BoundedPool(1)\n"
        "pool.map(abs, [(-1,)], 60.0, None, 60.0)\n"
        "print(pool._workers[0].proc.pid, flush=True)\n"
        "pool.map(time.sleep, [(120,)], 600.0, None, 600.0)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        limits = Path(f"/proc/{worker}/limits").read_text()
        cap = str(rewards.pool.WORKER_MEMORY_BYTES)
        assert any(line.startswith("Max address space") and cap in line for line in limits.splitlines())
        time.sleep(0.5)  # the worker is in its sleep
        assert _alive(worker)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; whoever adopted it reaps it


def test_timeout_must_be_an_integer_number_of_seconds():
    with pytest.raises(ValueError, match="integer"):
        get_reward("accuracy", timeout=1.5)
    with pytest.raises(ValueError, match="integer"):
        get_reward("cosine_accuracy", max_length=100, timeout=0)


def test_extraction_is_bounded_on_megabyte_outputs():
    text = "<think>\n" + "9" * 1_000_000 + "\n</think>\n" + "\\boxed{" * 200_000 + "\\boxed{42}"
    start = time.perf_counter()
    assert extract_answer(text) == "\\boxed{42}"
    assert extract_answer("x" * 1_000_000 + "{" * 1_000_000) == "{" * rewards.accuracy.ANSWER_TAIL_CHARS  # its tail
    assert time.perf_counter() - start < 1.0


# --- format -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        (THINK_OK, 1.0),
        ("  <think>reasoning</think>answer", 1.0),
        ([{"role": "assistant", "reasoning_content": "Six sevens.", "content": "\\boxed{42}"}], 1.0),
        ("<think>\n\n</think>\nThe answer is 42.", 0.0),  # empty reasoning
        ("<think>\nreasoning\n</think>\n   ", 0.0),  # no answer
        ("<think>\nreasoning\n", 0.0),  # never closed
        ("The answer: <think>\nreasoning\n</think>\n42", 0.0),  # block not at the start
        ("<think>a</think><think>b</think>42", 0.0),  # two blocks
        ("<think>a<think>b</think>c</think>42", 0.0),  # nested
        (NO_THINK_OK, 0.0),  # no block at all
        (None, 0.0),
    ],
)
def test_format_think_mode(completion, expected):
    assert get_reward("format")([completion], mode=["think"]) == [expected]


@pytest.mark.parametrize(
    "completion, expected",
    [
        (NO_THINK_OK, 1.0),
        ("42", 1.0),
        ("Forty-two: \\boxed{42}", 1.0),
        ("<think>\n\n</think>\nThe answer is 42.", 0.0),  # the template already emitted the empty block
        ("The answer is 42.</think>", 0.0),
        ("Let's think step by step. 6*7=42", 0.0),
        ("let me think... 42", 0.0),
        ("Step 1: multiply. \\boxed{42}", 0.0),
        ("First, multiply 6 by 7.", 0.0),
        ("Okay, so we need 6*7.", 0.0),
        ("  ", 0.0),
        ("", 0.0),
    ],
)
def test_format_no_think_mode(completion, expected):
    assert get_reward("mode_format")([completion], mode=["no_think"]) == [expected]


def test_format_accepts_slash_modes_and_gives_none_for_unknown_modes():
    fmt = get_reward("format")
    modes = ["/think", "/no_think", "auto", None]
    assert fmt([THINK_OK, NO_THINK_OK, THINK_OK, THINK_OK], mode=modes) == [1.0, 1.0, None, None]


def test_a_missing_column_is_a_wiring_error_named_in_the_message():
    with pytest.raises(ValueError, match="'mode'"):
        get_reward("format")([THINK_OK], answer=["42"])
    with pytest.raises(ValueError, match="'answer'"):
        get_reward("accuracy", workers=0)([THINK_OK], solution=["42"])
    assert get_reward("accuracy", workers=0, answer_column="solution")([THINK_OK], solution=["42"]) == [1.0]
    with pytest.raises(ValueError, match="2 rows for 1"):
        get_reward("length_budget")([THINK_OK], mode=["think", "think"])


# --- length -------------------------------------------------------------------------------------------------


def ids(n):
    return [0] * n


@pytest.mark.parametrize(
    "length, expected", [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (100, -1.0), (101, -1.0), (5000, -1.0)]
)
def test_soft_overlong_at_documented_points(length, expected):
    reward = get_reward("soft_overlong", max_length=100, cache_length=20)
    assert reward(["x"], completion_ids=[ids(length)]) == [pytest.approx(expected)]


def test_soft_overlong_estimates_tokens_from_characters_without_ids():
    reward = get_reward("soft_overlong", max_length=100, cache_length=20)
    # 360, 400 and 10,000 characters: 90, 100 and 2,500 tokens at 4 characters per token
    assert reward(["x" * 360, "x" * 400, "x" * 10_000]) == [pytest.approx(-0.5), pytest.approx(-1.0), -1.0]
    hard = get_reward("soft_overlong", max_length=100, cache_length=0)
    assert hard(["x"] * 2, completion_ids=[ids(100), ids(101)]) == [0.0, -1.0]


@pytest.mark.parametrize(
    "length, correct, wrong", [(0, 1.0, -1.0), (50, 0.75, -0.75), (100, 0.5, -0.5), (400, 0.5, -0.5)]
)
def test_cosine_accuracy_at_documented_points(length, correct, wrong):
    reward = get_reward("cosine_accuracy", max_length=100, workers=0, timeout=2)
    values = reward([NO_THINK_OK, "\\boxed{41}", NO_THINK_OK], answer=["42", "42", "{"], completion_ids=[ids(length)] * 3)
    assert values == [pytest.approx(correct), pytest.approx(wrong), None]


@pytest.mark.parametrize(
    "bounds", [{}, {"min_correct": 0.0, "max_correct": 2.0, "min_wrong": -3.0, "max_wrong": 0.25}]
)
def test_cosine_accuracy_is_trls_cosine_scaled_reward(bounds):
    from trl.rewards import get_cosine_scaled_reward

    names = {"min_correct": "min_value_correct", "max_correct": "max_value_correct",
             "min_wrong": "min_value_wrong", "max_wrong": "max_value_wrong"}
    ours = get_reward("cosine_accuracy", max_length=100, workers=0, timeout=2, **bounds)
    trls = get_cosine_scaled_reward(max_len=100, **{names[k]: v for k, v in bounds.items()})
    lengths = [0, 1, 17, 50, 99, 100, 101, 400]
    completions = [[{"role": "assistant", "content": c}] for c in ("\\boxed{42}", "\\boxed{41}") for _ in lengths]
    completion_ids = [ids(n) for n in lengths] * 2
    answers = ["42"] * len(completions)
    expected = trls(completions, answers, completion_ids)
    assert ours(completions, answer=answers, completion_ids=completion_ids) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "mode, length, expected",
    [
        ("think", 100, 0.0),
        ("think", 150, -0.5),
        ("think", 200, -1.0),
        ("think", 10_000, -1.0),
        ("no_think", 10, 0.0),
        ("no_think", 11, -0.1),
        ("no_think", 15, -0.5),
        ("no_think", 100, -1.0),  # far within the think budget, far over the no_think one
        ("other", 100, None),
    ],
)
def test_length_budget_per_mode(mode, length, expected):
    reward = get_reward("length_budget", think_budget=100, no_think_budget=10)
    expected = [None] if expected is None else [pytest.approx(expected)]
    assert reward(["x"], mode=[mode], completion_ids=[ids(length)]) == expected


# --- registry -----------------------------------------------------------------------------------------------


def test_unknown_reward_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown reward 'acuracy'.*accuracy.*soft_overlong"):
        get_reward("acuracy")


def test_bad_parameters_name_the_reward_and_what_it_accepts():
    with pytest.raises(ValueError, match="soft_overlong.*max_len.*accepts: max_length, cache_length"):
        get_reward("soft_overlong", max_len=10, cache_length=2)
    with pytest.raises(ValueError, match="soft_overlong.*max_length"):
        get_reward("soft_overlong", cache_length=2)
    with pytest.raises(ValueError, match="cache_length"):
        get_reward("soft_overlong", max_length=10, cache_length=20)


def test_every_reward_has_its_registry_name_and_survives_pickling():
    params = {
        "soft_overlong": {"max_length": 100, "cache_length": 10},
        "cosine_accuracy": {"max_length": 100, "workers": 0},
    }
    for name in REWARDS:
        reward = get_reward(name, **params.get(name, {}))
        assert reward.__name__ == name
        clone = pickle.loads(pickle.dumps(reward))  # TRL's async rollout worker ships reward funcs to a child process
        values = clone([THINK_OK], answer=["42"], mode=["think"], completion_ids=[ids(5)], gym=[""])
        assert len(values) == 1 and all(v is None or math.isfinite(v) for v in values)
