"""Bench the accuracy reward: serial vs the process pool, and the wall time of hostile batches.

    python bench/rewards.py [--n 2000] [--workers 2] [--timeout 1] [--adversarial-batches 8]

Prints JSON lines; the last one is the summary: `pool_vs_serial_speedup` (median completions/s with the pool over
in-process scoring, on realistic GRPO-shaped batches: 8 generations per problem, both modes, ~60% correct),
`projected_idle_speedup` (the same from CPU seconds, for a machine with a free core per worker: on a shared
machine the wall-clock figure follows the other jobs' load) and `adversarial_worst_s` (the slowest call over
batches of hostile completions, to compare with `timeout_s`, math-verify's per-call timeout, which is also the
batch bound used here).

Each timed run gets its own freshly generated completions (no string shared with another run, so no parse
cache hit across runs). Both sides first score one untimed batch: a training run's reward calls find the pool
started and math-verify's parser (ANTLR's lazily built DFA, sympy's cache) warm in every process; cold, each new
worker pays that again, which is most of the pool's extra CPU on a first batch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

# The repo, not bench/: there `import rewards` would find this file.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from rewards import get_reward  # noqa: E402

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


def hostile_batch(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Completions that make math-verify slow (power towers, huge factorials) mixed with malformed ones."""
    rng = random.Random(seed)
    slow = ["9^{9^{9^{9}}}", "10^{10^{10^{10}}}", "2^{2^{2^{2^{2^{2}}}}}", "(10^{7})!", "99999999^{99999999}"]
    junk = ["\\boxed{", "\\boxed{\\frac{1}{", "}" * 50 + "\\boxed{{{{", "<think><think>\\boxed{7}</think>", "٣"]
    junk.append("x" * 100_000)
    completions = []
    for _ in range(n):
        if rng.random() < 0.5:
            completions.append(f"<think>\nhmm\n</think>\nThe answer is \\boxed{{{rng.choice(slow)}}}.")
        else:
            completions.append(rng.choice(junk))
    return completions, ["7"] * n


def children_cpu_s() -> float:
    """CPU seconds used so far by this process's live children (the pool's workers); 0 where /proc lacks it."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{os.getpid()}/task"):
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
                for pid in f.read().split():
                    with open(f"/proc/{pid}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0.0
    return total / os.sysconf("SC_CLK_TCK")


def timed(reward, completions, answers) -> tuple[float, float, float, list]:
    """(wall seconds, CPU seconds of this process, CPU seconds of its workers, values)."""
    start, own, workers = time.perf_counter(), time.process_time(), children_cpu_s()
    values = reward(completions, answer=answers)
    return time.perf_counter() - start, time.process_time() - own, children_cpu_s() - workers, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adversarial-batches", type=int, default=8)
    parser.add_argument("--adversarial-size", type=int, default=64)
    args = parser.parse_args()

    serial = get_reward("accuracy", workers=0, timeout=args.timeout)
    pool = get_reward("accuracy", workers=args.workers, timeout=args.timeout, batch_timeout=120.0)
    for reward in (serial, pool):  # steady state of a training run: started, and math-verify's parser warmed
        timed(reward, *realistic_batch(args.n, seed=-1))

    rates, projected = {"serial": [], "pool": []}, {"serial": [], "pool": []}
    for r in range(args.repeats):
        for name, reward in (("serial", serial), ("pool", pool)):
            completions, answers = realistic_batch(args.n, seed=2 * r + (name == "pool"))
            seconds, own_cpu, worker_cpu, values = timed(reward, completions, answers)
            rates[name].append(args.n / seconds)
            # One core per worker and nothing else running: the parent's share, then the workers' in parallel.
            projected[name].append(own_cpu + worker_cpu / max(1, args.workers if name == "pool" else 1))
            print(json.dumps({
                "bench": f"accuracy_{name}", "repeat": r, "n": args.n, "workers": 0 if name == "serial" else args.workers,
                "seconds": round(seconds, 3), "cpu_s": round(own_cpu, 3), "worker_cpu_s": round(worker_cpu, 3),
                "completions_per_s": round(args.n / seconds, 1),
                "mean_reward": round(sum(v for v in values if v is not None) / len(values), 3),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }), flush=True)
    speedup = statistics.median(rates["pool"]) / statistics.median(rates["serial"])
    # On a machine shared with other jobs the wall-clock figure follows their load (with the kernel's autogroup
    # scheduling, all of this process's workers share one session's slice of the CPU). The projection uses CPU
    # seconds instead: the speedup on an otherwise idle machine with a core per worker.
    projected_speedup = statistics.median(projected["serial"]) / statistics.median(projected["pool"])

    hostile = get_reward("accuracy", workers=args.workers, timeout=args.timeout, batch_timeout=float(args.timeout))
    walls = []
    for b in range(args.adversarial_batches):
        seconds, _, _, values = timed(hostile, *hostile_batch(args.adversarial_size, seed=b))
        walls.append(seconds)
        print(json.dumps({
            "bench": "accuracy_adversarial", "batch": b, "n": args.adversarial_size, "seconds": round(seconds, 3),
            "all_finite": all(v is not None and v == v for v in values),
        }), flush=True)

    print(json.dumps({
        "pool_vs_serial_speedup": round(speedup, 2),
        "serial_completions_per_s": round(statistics.median(rates["serial"]), 1),
        "pool_completions_per_s": round(statistics.median(rates["pool"]), 1),
        "workers": args.workers,
        "projected_idle_speedup": round(projected_speedup, 2),
        "adversarial_worst_s": round(max(walls), 3),
        "adversarial_mean_s": round(sum(walls) / len(walls), 3),
        "timeout_s": args.timeout,
        "batch_timeout_s": float(args.timeout),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other processes on the machine skew the speedup both ways
    }))


if __name__ == "__main__":
    main()
