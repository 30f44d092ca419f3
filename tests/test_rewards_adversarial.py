"""1,000 hostile completions through every registered reward: no exception, bounded time, finite values, and the
correct rows mixed in among them still scored as they are alone.

None is allowed only where a reward documents it: the accuracy rewards for a gold answer that does not parse,
the mode-aware rewards for a row whose mode is neither think nor no_think.
"""

import json
import math
import random
import time

from rewards import REWARDS, get_reward
from rewards.accuracy import gold_text, verify_one
from rewards.gym import PREPARE_TIMEOUT_S
from rewards.format import normalize_mode

N = 1000
TIMEOUT = 1  # math-verify's per-call timeout, seconds
# The pool's bound per call. Its first pass over this batch (every item on a 20 ms CPU budget; ~80 of them use
# it up) is ~1 s of CPU per worker, measured 2.1 s wall with the 2 cores shared at load 3.4; the correct rows
# need that pass done.
BATCH_TIMEOUT = 5.0
CORRECT = "<think>\nSix plus one.\n</think>\nThe answer is \\boxed{7}."  # mixed in: every CORRECT_EVERY-th row
CORRECT_EVERY = 20

MEGABYTE = "7" * 1_000_000
LONG_IDS = list(range(100_000))
HOSTILE_TEXT = [
    "",
    " ",
    "\x00\x00",
    "\\boxed{",
    "\\boxed{\\boxed{\\boxed{",
    "\\boxed{}",
    "\\boxed{42",
    "}}}}\\boxed{{{{42}",
    "\\boxed{\\frac{1}{",
    "\\boxed{\\frac{1}{0}}",
    "\\boxed{0/0}",
    "\\boxed{\\infty}",
    "\\boxed{1e999999}",
    "\\boxed{" + "9" * 5000 + "}",  # past Python's int-string conversion limit
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{10^{10^{10^{10}}}}",
    "\\boxed{(10^{7})!}",
    "\\boxed{99999999^{99999999}}",
    "The answer is ٤٢ (Arabic-Indic digits) or ４２ (full-width).",
    "\\boxed{٤٢}",
    "<think>",
    "</think>",
    "</think></think></think>\\boxed{7}",
    "<think><think>\\boxed{7}</think></think>",
    "<think>a<think>b</think>c</think>\\boxed{7}",
    "<think>\n\\boxed{7}\n</think>",
    "<think>" * 10_000 + "\\boxed{7}",
    "$" * 10_000,
    "\\" * 10_000,
    "{" * 100_000,
    "\\boxed{" * 50_000,
    "1," * 50_000,
    "-" * 10_000 + "7",
    "\\boxed{x^2 + y^2 = z^2}",
    "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}",
    "\\boxed{\\text{" + "a" * 900 + "}}",
    "\\boxed{" + "x" * 5000 + "}",
    "🙂 " * 1000 + "\\boxed{7}",
    "\u202e\\boxed{7}\u202c",
    MEGABYTE,
    "<think>\n" + MEGABYTE + "\n</think>\n\\boxed{7}",
    "\\boxed{7}" + "\n" * 1_000_000,
    "Let's think step by step. \\boxed{7}",
]
HOSTILE_OTHER = [
    None,
    42,
    3.5,
    float("nan"),
    b"\\boxed{7}",
    {"content": "\\boxed{7}"},
    [],
    [None],
    [{"role": "assistant"}],
    [{"role": "assistant", "content": None}],
    [{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{7}"}, {"type": "image"}]}],
    [{"role": "assistant", "content": {"nested": True}}],
    [{"role": "assistant", "content": "\\boxed{7}", "reasoning_content": 12}],
    [{"role": "tool", "content": "\\boxed{7}"}],
    [[[]]],
]
def SLOW(text: str) -> bool:
    """Inputs that make math-verify run until its timeout."""
    return any(marker in text for marker in ("9^{9", "10^{10", ")!", "99999999^"))


GOLDS = ["7", "\\frac{1}{2}", "1,234", "42", 7, None, "", "{", "\\frac{1}{", "9^{9^{9^{9}}}", "x" * 5000, float("nan")]
MODES = ["think", "no_think", "/think", "auto_think", None, "", "THINK", 3, "both"]
PARAMS = {
    "accuracy": {"timeout": TIMEOUT, "batch_timeout": BATCH_TIMEOUT},
    "cosine_accuracy": {"max_length": 4096, "timeout": TIMEOUT, "batch_timeout": BATCH_TIMEOUT},
    "soft_overlong": {"max_length": 4096, "cache_length": 512},
    "gym_accuracy": {"timeout": TIMEOUT, "batch_timeout": BATCH_TIMEOUT},
    "adaptive_accuracy": {"timeout": TIMEOUT, "batch_timeout": BATCH_TIMEOUT},
}
# Rewards whose scorer sticks in C code on some hostile rows (sympy's parse_expr on `1e999999` ignores signals): each
# such row costs the pool a worker, killed and restarted cold, and the rest of that worker's chunk, so in a batch of
# hundreds of them many honest rows score 0. tests/test_gym.py checks what a batch with a few of them loses.
KILLS_WORKERS = {"gym_accuracy"}
# Every row a reasoning-gym countdown problem for `gym_accuracy` (sympy parses the hostile text there)
GYM = [json.dumps({"task": "countdown", "options": {}, "seed": 1, "size": 4, "index": i % 4}) for i in range(N)]


def hostile_batch(seed=0):
    rng = random.Random(seed)
    pool = HOSTILE_TEXT + HOSTILE_OTHER
    completions = [pool[i] if i < len(pool) else rng.choice(pool) for i in range(N)]
    answers = [rng.choice(GOLDS) for _ in range(N)]
    modes = [rng.choice(MODES) for _ in range(N)]
    completion_ids = [rng.choice([None, [], [1] * rng.randint(0, 10_000), "not ids", 5, LONG_IDS]) for _ in range(N)]
    for i in range(0, N, CORRECT_EVERY):
        completions[i], answers[i], modes[i], completion_ids[i] = CORRECT, "7", "think", [1] * 20
    return completions, answers, modes, completion_ids


def gold_may_be_none(gold) -> bool:
    text = gold_text(gold)
    return text is None or verify_one(text, None, TIMEOUT) is None


def test_every_registered_reward_survives_1000_hostile_completions():
    completions, answers, modes, completion_ids = hostile_batch()
    none_ok = {
        "accuracy": [gold_may_be_none(g) for g in answers],
        "cosine_accuracy": [gold_may_be_none(g) for g in answers],
        "format": [normalize_mode(m) is None for m in modes],
        "mode_format": [normalize_mode(m) is None for m in modes],
        "length_budget": [normalize_mode(m) is None for m in modes],
        "soft_overlong": [False] * N,
        "repetition_penalty": [False] * N,
        "tag_count": [normalize_mode(m) is None for m in modes],
        "reasoning_steps": [normalize_mode(m) != "think" for m in modes],
        "gym_accuracy": [False] * N,
        "adaptive_accuracy": [gold_may_be_none(g) for g in answers],
    }
    assert set(none_ok) == set(REWARDS), "a new reward needs its None rule here"
    correct_rows = range(0, N, CORRECT_EVERY)
    accuracy = get_reward("accuracy", **PARAMS["accuracy"])
    assert accuracy([CORRECT], answer=["7"]) == [1.0]  # the pool started: its start is not a batch's time
    start = time.monotonic()
    for name in REWARDS:
        reward = get_reward(name, **PARAMS.get(name, {}))
        alone = reward([CORRECT], answer=["7"], mode=["think"], completion_ids=[[1] * 20], gym=GYM[:1])[0]
        t0 = time.monotonic()
        values = reward(completions, answer=answers, mode=modes, completion_ids=completion_ids, prompts=[None] * N,
                        gym=GYM)
        # the bound, plus extraction of 1 MB strings (gym: plus its warm-up of workers the batch before replaced)
        assert time.monotonic() - t0 < BATCH_TIMEOUT + 1.0 + (PREPARE_TIMEOUT_S if name in KILLS_WORKERS else 0), name
        assert len(values) == N, name
        if name in KILLS_WORKERS:  # honest rows keep their score or, on a worker killed mid-chunk, score 0
            assert {values[i] for i in correct_rows} <= {alone, 0.0}, name
        else:
            assert [values[i] for i in correct_rows] == [alone] * len(correct_rows), name  # not dropped with the rest
        for i, value in enumerate(values):
            if value is None:
                row = f"{completions[i]!r:.80}, gold {answers[i]!r:.40}, mode {modes[i]!r}"
                assert none_ok[name][i], f"{name}: None for row {i} ({row})"
            else:
                assert isinstance(value, float) and math.isfinite(value), f"{name}: {value!r} for row {i}"
    assert time.monotonic() - start < 45  # every reward, generous for a loaded 2-core machine


def test_hostile_conversational_and_plain_batches_give_the_same_accuracy():
    """Plain and message forms of the same text are one completion: the same values."""
    texts = [t for t in HOSTILE_TEXT if not SLOW(t)]
    accuracy = get_reward("accuracy", **PARAMS["accuracy"])
    plain = accuracy(texts, answer=["7"] * len(texts))
    chat = accuracy([[{"role": "assistant", "content": t}] for t in texts], answer=["7"] * len(texts))
    assert plain == chat
    assert all(v in (0.0, 1.0) for v in plain) and 1.0 in plain


def test_the_serial_path_survives_hostile_completions_without_raising():
    """Debug path (no pool): math-verify's own timeouts only, so the fast hostile inputs and one slow one."""
    sample = [t for t in HOSTILE_TEXT if not SLOW(t)] + HOSTILE_OTHER + ["\\boxed{9^{9^{9^{9}}}}"]
    values = get_reward("accuracy", workers=0, timeout=TIMEOUT)(sample, answer=["7"] * len(sample))
    assert len(values) == len(sample) and all(v in (0.0, 1.0) for v in values)
