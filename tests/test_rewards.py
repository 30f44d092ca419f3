"""The `rewards` package: real math-verify, real worker pool, the values each reward documents."""

import logging
import math
import os
import pickle
import threading
import time

import pytest

import rewards.accuracy
from rewards import REWARDS, get_reward, mean_length_by_mode
from rewards.accuracy import extract_answer
from rewards.pool import BoundedPool

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


def test_unparseable_gold_gives_none_and_warns_once(accuracy, caplog):
    rewards.accuracy._warned.discard("gold")
    with caplog.at_level(logging.WARNING, logger="rewards.accuracy"):
        values = accuracy([NO_THINK_OK] * 5, answer=["{", "", None, "\\frac{1}{", "42"])
        accuracy([NO_THINK_OK], answer=["{"])
    assert values == [None, None, None, None, 1.0]
    assert sum("did not parse" in r.message for r in caplog.records) == 1


def test_serial_path_matches_the_pool(accuracy):
    completions = [THINK_OK, NO_THINK_OK, "<think>\n\\boxed{42}\n</think>\nno idea", "\\boxed{0.5}", "x"]
    golds = ["42", "42", "42", "\\frac{1}{2}", "{"]
    serial = get_reward("accuracy", workers=0, timeout=2)
    assert serial(completions, answer=golds) == accuracy(completions, answer=golds) == [1.0, 1.0, 0.0, 1.0, None]


def test_accuracy_works_off_the_main_thread(accuracy):
    """signal.alarm needs the main thread: the pool's workers have their own; the serial path drops timeouts."""
    out = {}
    serial = get_reward("accuracy", workers=0, timeout=2)
    def score_both():
        out.update(pool=accuracy([NO_THINK_OK], answer=["42"]), serial=serial([NO_THINK_OK], answer=["42"]))

    thread = threading.Thread(target=score_both)
    thread.start()
    thread.join(60)
    assert out == {"pool": [1.0], "serial": [1.0]}


def test_a_batch_returns_at_its_bound_and_the_busy_worker_rejoins(accuracy):
    # math-verify's own timeout (3 s) is longer than the batch bound (1 s): only the pool's bound can cut it.
    hasty = get_reward("accuracy", workers=2, timeout=3, batch_timeout=1.0)
    assert accuracy([NO_THINK_OK], answer=["42"]) == [1.0]  # the shared pool is started (outside the bound)
    start = time.monotonic()
    values = hasty(["\\boxed{9^{9^{9^{9}}}}", NO_THINK_OK], answer=["7", "42"])
    elapsed = time.monotonic() - start
    assert values == [0.0, 1.0]
    assert 0.9 < elapsed < 2.5  # the bound, not the 3 s math-verify would have taken
    assert accuracy([THINK_OK, "\\boxed{41}"] * 4, answer=["42"] * 8) == [1.0, 0.0] * 4  # the pool still works


def test_a_worker_stuck_past_its_batch_is_killed_and_replaced():
    """A worker that no alarm frees (here: a plain sleep) is killed `stuck_after` seconds past the deadline."""
    pool = BoundedPool(1)
    try:
        assert pool.map(abs, [(-1,)], batch_timeout=60.0, default=None, stuck_after=1.0) == ([1], 0)  # started
        start = time.monotonic()
        assert pool.map(time.sleep, [(60,)], batch_timeout=0.5, default=None, stuck_after=0.5) == ([None], 1)
        assert time.monotonic() - start < 2.0  # the 0.5 s bound, not the 60 s sleep
        stuck = pool._workers[0].proc
        time.sleep(0.6)
        assert pool.map(abs, [(-3,), (4,)], batch_timeout=60.0, default=None, stuck_after=1.0) == ([3, 4], 0)
        assert stuck.poll() is not None and pool._workers[0].proc is not stuck
    finally:
        pool.close()


def test_a_worker_that_dies_mid_batch_costs_only_its_items():
    """A crash (here os._exit, as an OOM kill would) leaves the default for what it held; a new worker goes on."""
    pool = BoundedPool(1)
    try:
        values, dropped = pool.map(os._exit, [(3,)], batch_timeout=30.0, default=None, stuck_after=1.0)
        assert (values, dropped) == ([None], 1)
        assert pool.map(abs, [(-1,), (-2,)], batch_timeout=30.0, default=None, stuck_after=1.0) == ([1, 2], 0)
    finally:
        pool.close()


def test_timeout_must_be_an_integer_number_of_seconds():
    with pytest.raises(ValueError, match="integer"):
        get_reward("accuracy", timeout=1.5)
    with pytest.raises(ValueError, match="integer"):
        get_reward("cosine_accuracy", max_length=100, timeout=0)


def test_extraction_is_bounded_on_megabyte_outputs():
    text = "<think>\n" + "9" * 1_000_000 + "\n</think>\n" + "\\boxed{" * 200_000 + "\\boxed{42}"
    start = time.perf_counter()
    assert extract_answer(text) == "\\boxed{42}"
    assert extract_answer("x" * 1_000_000 + "{" * 1_000_000) is None
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


def test_mean_length_by_mode():
    modes = ["think", "think", "no_think", None]
    assert mean_length_by_mode([ids(10), ids(30), ids(4), ids(99)], modes) == {"think": 20.0, "no_think": 4.0}
    assert mean_length_by_mode([], []) == {}


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
        values = clone([THINK_OK], answer=["42"], mode=["think"], completion_ids=[ids(5)])
        assert len(values) == 1 and all(v is None or math.isfinite(v) for v in values)
