"""`gym_accuracy`: reasoning-gym's own scorer, for the problems its procedural generators make.

reasoning-gym (PyPI, no download) generates problems whose answers are not always one number (countdown: any
expression that reaches the target from the given numbers) and scores each with its task's `score_answer`
(1.0 right, small partial credits for a well-formed wrong answer). A row of posttrain.data's `reasoning_gym`
source carries in its `gym` column the task, options, seed and size that regenerate its entry (generation is
deterministic) and its index; rows without one score None (not applicable), which TRL and evaluation skip.

The completion's answer is cut as the accuracy reward cuts it: after the think block, the last `\\boxed{}`,
else the last non-empty line. Scorers parse that text (countdown with sympy's `parse_expr`, where `9**9**9**9`
never returns), so items are scored as the accuracy reward verifies: in its bounded process pool, a first pass on
a small CPU budget, then the rest under a per-row timeout, all by the batch's deadline; a row cut off, or whose
scorer raised, scores 0. Unlike math-verify, sympy can stick in C code, where no signal reaches it (`1e999999`):
such a row holds its worker to the deadline and the rows after it in the worker's chunk (1/16 of a batch on 2
workers) score 0 too; the worker is then replaced.
"""

from __future__ import annotations

import functools
import json
import signal
import threading
import time

from rewards.accuracy import (
    FAST_CPU_S, MAX_ANSWER_CHARS, NO_RESULT, OVER_BUDGET, STUCK_AFTER_S, answer_part, boxed_content, bounded, check_params, two_pass,
)
from rewards.format import column, completion_text
from rewards.pool import get_pool

PREPARE_TIMEOUT_S = 60.0  # for a worker to import reasoning-gym (~1.5 s) and generate a task's entries


class GymError(ValueError):
    """reasoning-gym is missing, or the task or its options are not valid."""


def _package():
    try:
        import reasoning_gym
    except ImportError:
        raise GymError("needs the reasoning-gym package: pip install 'posttrain[gym]'") from None
    return reasoning_gym


@functools.lru_cache(maxsize=64)
def dataset(spec: str):
    """The reasoning-gym dataset of `spec` (JSON: task, options, seed, size), built once per process."""
    rg = _package()
    spec = json.loads(spec)
    if spec["task"] not in rg.factory.DATASETS:
        raise GymError(f"unknown reasoning-gym task {spec['task']!r} (e.g. basic_arithmetic, chain_sum, "
                       f"gsm_symbolic, countdown; {len(rg.factory.DATASETS)} in all)")
    try:
        return rg.create_dataset(spec["task"], size=spec["size"], seed=spec["seed"], **spec["options"])
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise GymError(f"task {spec['task']!r}: options {spec['options']} rejected ({e})") from None


def candidate(text: str) -> str:
    """The answer to score: the last `\\boxed{}` after the think block, else its last non-empty line."""
    answer = answer_part(text)
    boxed = boxed_content(answer)
    if boxed is not None:
        return boxed
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    return lines[-1][-MAX_ANSWER_CHARS:] if lines else ""


def _entry(gym: str):
    """(dataset, index) of the row that a `gym` column value names."""
    spec = json.loads(gym)
    index = spec.pop("index")
    return dataset(json.dumps(spec, sort_keys=True)), index


def score_one(answer: str, gym: str) -> float:
    """The task's own score of `answer` for the entry that `gym` names; 0.0 if the scorer raises."""
    ds, index = _entry(gym)
    try:
        return float(ds.score_answer(answer=answer, entry=ds[index]))
    except Exception:  # a scorer's own bug on odd text is this row's 0, not the batch's crash
        return 0.0


def prepare(specs: tuple[str, ...]) -> bool:
    """Generate the entries of every spec in this process (cached): the pool's warm-up for a batch."""
    for gym in specs:
        _entry(gym)
    return True


def score_fast(answer: str, gym: str) -> float | str:
    """First pass: `score_one` within FAST_CPU_S of CPU time, else OVER_BUDGET (entries generated untimed first)."""
    _entry(gym)
    return bounded(signal.ITIMER_PROF, signal.SIGPROF, FAST_CPU_S, OVER_BUDGET, score_one, answer, gym)


def score_until(answer: str, gym: str, timeout: float, deadline: float) -> float | str:
    """`score_one` for at most `timeout` wall-clock seconds and never past `deadline`, else NO_RESULT. The task's
    entries are generated first, untimed (our own code, once per worker: importing reasoning-gym takes ~1.5 s);
    only the scorer, which reads the model's text, runs under the timer."""
    _entry(gym)
    seconds = min(timeout, deadline - time.monotonic())
    if seconds <= 0:
        return NO_RESULT
    return bounded(signal.ITIMER_REAL, signal.SIGALRM, seconds, NO_RESULT, score_one, answer, gym)


class GymAccuracy:
    """`gym_accuracy`: the reasoning-gym task's own score of the answer after the think block (column `gym`).

    Params as the accuracy reward's: `workers` (pool processes; 0 = in this process: debugging only),
    `timeout` (seconds per row), `batch_timeout` (the batch's wall-clock deadline, default `timeout`). A worker
    generates a task's entries once (cached) in a warm-up before the batch, outside its deadline: importing
    reasoning-gym alone takes ~1.5 s.
    """

    def __init__(self, workers: int = 2, timeout: int = 3, batch_timeout: float | None = None):
        self.workers, self.timeout, self.batch_timeout = check_params(workers, timeout, batch_timeout)
        self.__name__ = "gym_accuracy"

    def __call__(self, completions, **kwargs) -> list[float | None]:
        completions = list(completions or [])
        specs = column(kwargs, "gym", len(completions), self.__name__)
        rows = [i for i, gym in enumerate(specs) if gym]
        unique = tuple(dict.fromkeys(specs[i] for i in rows))
        prepare(unique)  # a bad spec fails here, once, naming the task
        items = [(candidate(completion_text(completions[i])), specs[i]) for i in rows]
        pool = get_pool(self.workers) if self.workers > 0 and items else None
        if pool is not None and pool.start():  # one warm-up item per worker, outside the batch's deadline
            pool.map(prepare, [(unique,)] * pool.size, PREPARE_TIMEOUT_S, False, STUCK_AFTER_S)
        values = two_pass(score_fast, score_until, items, self.workers, self.timeout, self.batch_timeout)
        if values is None:  # no pool (workers=0): in this process, each row cut at `timeout` on the main thread
            if threading.current_thread() is not threading.main_thread():
                return [None] * len(completions)  # no timer can run here: not scored rather than unbounded
            values = [score_until(*item, self.timeout, time.monotonic() + self.timeout) for item in items]
        rewards: list[float | None] = [None] * len(completions)
        for i, value in zip(rows, values):
            rewards[i] = 0.0 if value == NO_RESULT else value
        return rewards
