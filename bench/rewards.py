"""Bench the accuracy reward: serial vs the process pool, and the wall time of batches with hostile rows.

    python bench/rewards.py [--n 2000] [--workers 2] [--adversarial-batches 8] [--hostile-rows 4 16 40]

Prints JSON lines; the last one is the summary: `pool_vs_serial_speedup` (median wall-clock completions/s with
the pool over in-process scoring, on realistic GRPO-shaped batches: 8 generations per problem, both modes, ~60%
correct) and `adversarial_worst_s` (per count of hostile rows, the slowest call over realistic batches of 64
with that many hostile completions mixed in), to compare with `batch_timeout_s` (the batch's deadline) and
`timeout_s` (the bound per row). Both are the accuracy reward's defaults, which a recipe gets unless it sets
them: the worst case is what a training step would wait. The summary also says how many rows were dropped
(timed out, scored 0) and whether every normal row mixed in scored what it scores alone.

Each timed run gets its own freshly generated completions (no string shared with another run, so no parse
cache hit across runs). Both sides first score one untimed batch: a training run's reward calls find the pool
started and math-verify's parser (ANTLR's lazily built DFA, sympy's cache) warm in every process; cold, each new
worker pays that again, which is most of the pool's extra CPU on a first batch.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import statistics
import sys
import time

# The repo, not bench/: there `import rewards` would find this file.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from rewards import get_reward  # noqa: E402
from rewards.accuracy import Accuracy  # noqa: E402

DEFAULTS = {k: v.default for k, v in inspect.signature(Accuracy).parameters.items()}

GENERATIONS = 8


def problem(rng: random.Random, offset: int) -> tuple[str, str, list[str]]:
    """(question text, gold answer, plausible wrong answers) for one arithmetic problem; `offset` shifts the
    numbers so that separate runs share no strings (and no math-verify cache entries)."""
    kind = rng.random()
    if kind < 0.6:
        a, b = offset + rng.randint(10, 999), rng.randint(10, 999)
        gold = a * b if rng.random() < 0.5 else a + b
        text = f"{a} * {b}" if gold == a * b else f"{a} + {b}"
        gold_str = f"{gold:,}" if gold >= 1000 and rng.random() < 0.3 else str(gold)
        return text, gold_str, [str(gold + d) for d in (1, -1, 10, rng.randint(2, 99))]
    if kind < 0.85:
        p, q = offset + rng.randint(1, 9), rng.randint(2, 12)
        return f"{p}/{q} as a fraction", f"\\frac{{{p}}}{{{q}}}", [f"\\frac{{{p + 1}}}{{{q}}}", f"\\frac{{{q}}}{{{p}}}"]
    x = offset + rng.randint(2, 30)
    return f"sqrt of {x * x}", str(x), [str(x + 1), f"\\sqrt{{{x}}}"]


def completion(rng: random.Random, question: str, gold: str, wrong: list[str], mode: str) -> str:
    answer = gold if rng.random() < 0.6 else rng.choice(wrong)
    if "\\frac" in answer and rng.random() < 0.3:  # the same value written another way
        p, q = answer[6:-1].split("}{")
        answer = f"{int(p) / int(q):.6g}"
    final = f"The answer is \\boxed{{{answer}}}." if rng.random() < 0.85 else f"So the result is {answer}."
    if mode == "no_think":
        return final
    steps = "\n".join(f"Step {i}: {question}, partial value {rng.randint(1, 9999)}." for i in range(rng.randint(3, 12)))
    return f"<think>\nWe need {question}.\n{steps}\nCheck the arithmetic once more.\n</think>\n{final}"


def realistic_batch(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    completions, answers = [], []
    while len(completions) < n:
        question, gold, wrong = problem(rng, offset=10_000 * (seed + 1))
        mode = rng.choice(["think", "no_think"])
        for _ in range(GENERATIONS):
            completions.append(completion(rng, question, gold, wrong, mode))
            answers.append(gold)
    return completions[:n], answers[:n]


def hostile_batch(n: int, hostile: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    """A realistic batch with `hostile` rows replaced, half by completions that make math-verify slow (power
    towers, huge factorials: each holds a worker for the whole timeout) and half by malformed ones. Returns the
    completions, the golds and the positions of the normal rows."""
    rng = random.Random(seed)
    slow = ["9^{9^{9^{9}}}", "10^{10^{10^{10}}}", "2^{2^{2^{2^{2^{2}}}}}", "(10^{7})!", "99999999^{99999999}"]
    junk = ["\\boxed{", "\\boxed{\\frac{1}{", "}" * 50 + "\\boxed{{{{", "<think><think>\\boxed{7}</think>", "٣"]
    junk.append("x" * 100_000)
    completions, answers = realistic_batch(n, seed=1000 + seed)
    positions = set(rng.sample(range(n), hostile))
    for i, k in enumerate(sorted(positions)):
        if i % 2 == 0:
            completions[k] = f"<think>\nhmm\n</think>\nThe answer is \\boxed{{{rng.choice(slow)}}}."
        else:
            completions[k] = rng.choice(junk)
    return completions, answers, [i for i in range(n) if i not in positions]


def timed(reward, completions, answers, **kwargs) -> tuple[float, list]:
    """(wall seconds, values)."""
    start = time.perf_counter()
    values = reward(completions, answer=answers, **kwargs)
    return time.perf_counter() - start, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=DEFAULTS["timeout"])
    parser.add_argument("--batch-timeout", type=float, default=DEFAULTS["batch_timeout"], help="default: --timeout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adversarial-batches", type=int, default=8)
    parser.add_argument("--adversarial-size", type=int, default=64)
    parser.add_argument("--hostile-rows", type=int, nargs="+", default=[4, 16, 40])
    args = parser.parse_args()

    serial = get_reward("accuracy", workers=0, timeout=args.timeout)
    pool = get_reward("accuracy", workers=args.workers, timeout=args.timeout, batch_timeout=args.batch_timeout)
    for reward in (serial, pool):  # steady state of a training run: started, and math-verify's parser warmed
        timed(reward, *realistic_batch(args.n, seed=-1))

    rates = {"serial": [], "pool": []}
    for r in range(args.repeats):
        for name, reward in (("serial", serial), ("pool", pool)):
            completions, answers = realistic_batch(args.n, seed=2 * r + (name == "pool"))
            seconds, values = timed(reward, completions, answers)
            rates[name].append(args.n / seconds)
            print(json.dumps({
                "bench": f"accuracy_{name}", "repeat": r, "n": args.n, "workers": 0 if name == "serial" else args.workers,
                "seconds": round(seconds, 3), "completions_per_s": round(args.n / seconds, 1),
                "mean_reward": round(sum(v for v in values if v is not None) / len(values), 3),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }), flush=True)
    # Wall clock, so on a machine shared with other jobs it follows their load: each worker is in its own session
    # (so its own autogroup, where the kernel groups by session) and competes for the cores as one more job.
    speedup = statistics.median(rates["pool"]) / statistics.median(rates["serial"])

    walls, dropped, normal_ok, normal_total = {}, [], 0, 0
    for hostile in args.hostile_rows:
        for b in range(args.adversarial_batches):
            completions, answers, normal = hostile_batch(args.adversarial_size, hostile, seed=b)
            expected = serial([completions[i] for i in normal], answer=[answers[i] for i in normal])
            metrics = {}
            seconds, values = timed(pool, completions, answers, log_metric=metrics.__setitem__)
            ok = sum(values[i] == e for i, e in zip(normal, expected))
            walls.setdefault(hostile, []).append(seconds)
            dropped.append(int(metrics["rewards/accuracy/timeouts"]))
            normal_ok, normal_total = normal_ok + ok, normal_total + len(normal)
            print(json.dumps({
                "bench": "accuracy_adversarial", "batch": b, "n": args.adversarial_size, "hostile": hostile,
                "seconds": round(seconds, 3), "dropped": dropped[-1], "normal_rows_as_alone": f"{ok}/{len(normal)}",
                "all_finite": all(v is None or math.isfinite(v) for v in values),
            }), flush=True)

    print(json.dumps({
        "pool_vs_serial_speedup": round(speedup, 2),
        "serial_completions_per_s": round(statistics.median(rates["serial"]), 1),
        "pool_completions_per_s": round(statistics.median(rates["pool"]), 1),
        "workers": args.workers,
        "adversarial_worst_s": {str(h): round(max(w), 3) for h, w in walls.items()},
        "adversarial_mean_s": {str(h): round(sum(w) / len(w), 3) for h, w in walls.items()},
        "adversarial_dropped_max": max(dropped),
        "adversarial_normal_rows_as_alone": round(normal_ok / normal_total, 4),
        "timeout_s": args.timeout,
        "batch_timeout_s": pool.batch_timeout,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other processes on the machine skew the speedup both ways
    }))


if __name__ == "__main__":
    main()
