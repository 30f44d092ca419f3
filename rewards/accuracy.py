"""Math accuracy with math-verify: the final answer after the think block against the gold answer.

Why not TRL's `accuracy_reward`: it parses the whole completion, so an answer that appears only inside
`<think>…</think>` scores 1 and RL learns to hide answers in the reasoning. TRL 1.16's `reasoning_accuracy_reward`
cuts the answer after `</think>`, but scores 0 every completion without that tag, i.e. every /no_think one (the
empty think block is in the prompt, not the completion). Both call math-verify in the trainer process, where
`signal.alarm` timeouts need the main thread and a stuck parse stalls training. Here the
answer is cut out of the completion first (cheap, linear, in the trainer process), and only the short
candidate goes to math-verify in a `BoundedPool` (see `rewards.pool`), under a wall-clock deadline per batch.

A batch is verified in two passes so that a few hostile completions cannot starve the rest: first every item
with a small CPU budget (FAST_CPU_S, ~10x a normal parse + verify), then, until the batch's deadline, the items
that ran over it, each for at most `timeout` seconds. Without that, each `9^{9^{9^{9}}}` holds a worker for the
whole timeout, and a batch with a few dozen of them scores nearly every row 0 at its deadline. The workers cut
items with their own timers (`verify_fast`, `verify_until`), not math-verify's per-call alarms: an item makes
up to three such calls (gold, parse, verify), and with them each hostile row held a worker for a timeout or
more, one after another (12.4 s for a batch with 8 power towers at timeout 3 s on 2 workers), and the workers
stayed busy into the next batch.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import signal
import threading
import time

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from common.template import THINK_CLOSE, THINK_OPEN
from rewards.format import column, completion_text
from rewards.pool import get_pool

logger = logging.getLogger(__name__)

ANSWER_TAIL_CHARS = 4096  # the final answer is looked for in this many last characters of the answer part
MAX_ANSWER_CHARS = 1000  # a longer \boxed{} content scores 0 without reaching math-verify
MAX_GOLD_CHARS = 1000  # a longer gold answer counts as unparseable
_BOXED_TRIES = 4  # how many trailing \boxed occurrences to try when the last one is unbalanced

_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")
# Boxes first; else math-verify reads the answer text as it would (LaTeX in delimiters, then plain numbers and
# expressions, the rightmost match first). Default normalization: `units=True` (as in TRL) turns `\sqrt 2` into
# nothing parseable.
_PRED_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

FAST_CPU_S = 0.02  # first-pass CPU budget per item; a normal parse + verify takes 1-2 ms
NO_RESULT = "no result"  # the pool's value for an item without a result by the deadline (or whose worker died)
OVER_BUDGET = "over budget"  # a first-pass item that ran past FAST_CPU_S; it goes to the second pass
# A worker still busy this long past its batch's deadline, which its own timer enforces, is stuck in C code (a
# big-int power ignores signals until it returns): the pool kills and replaces it.
STUCK_AFTER_S = 1.0


def answer_part(text: str) -> str:
    """What follows the think block: after the last `</think>`, and before any `<think>` left open after it.

    A completion with no `</think>` but an open `<think>` keeps only what precedes the tag, so an answer
    written only inside the reasoning (closed or not) is never read.
    """
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        text = text[close + len(THINK_CLOSE) :]
    start = text.find(THINK_OPEN)
    return text[:start] if start >= 0 else text


def boxed_content(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}` anywhere in `text` (trying the last few), None if there is
    none, "" if that box holds more than MAX_ANSWER_CHARS. Linear and bounded: `rfind` from the end, then a brace
    scan of at most MAX_ANSWER_CHARS + 1 characters per box, so a megabyte of hostile braces costs nothing."""
    end = len(text)
    for _ in range(_BOXED_TRIES):
        end = text.rfind("\\boxed", 0, end)
        if end < 0:
            return None
        opening = _BOXED.match(text, end)
        if opening is None:  # `\boxed` without a brace: not an answer
            continue
        start, depth = opening.end(), 1
        stop = start + MAX_ANSWER_CHARS + 1
        for brace in _BRACE.finditer(text, start, stop):
            depth += 1 if brace.group() == "{" else -1
            if depth == 0:
                return text[start : brace.start()].strip() or None
        if len(text) >= stop:  # not closed within the cap: too long to be a final answer
            return ""
    return None


def extract_answer(text: str) -> str | None:
    """The candidate final answer for math-verify, or None if there is none.

    The last balanced `\\boxed{}` after the think block, wherever it is (a long check written after it does
    not hide it), as a `\\boxed{...}` string; else the last ANSWER_TAIL_CHARS characters after the think block,
    which math-verify's own extraction reads (`$2^{10}$` is 1024 there, not the 10 a digit regex would find).
    A Unicode minus (U+2212) becomes "-", which math-verify does not know. A box longer than MAX_ANSWER_CHARS
    scores 0 without reaching math-verify.
    """
    answer = answer_part(text)
    content = boxed_content(answer)
    if content == "":
        return None
    candidate = f"\\boxed{{{content}}}" if content is not None else answer[-ANSWER_TAIL_CHARS:]
    return candidate.replace("\u2212", "-") if candidate.strip() else None


def gold_text(gold) -> str | None:
    """The gold answer as a string (ints and floats from a dataset column are fine), None if unusable."""
    if isinstance(gold, bool) or gold is None or (isinstance(gold, float) and not math.isfinite(gold)):
        return None
    if isinstance(gold, (int, float)):
        gold = str(gold)
    if not isinstance(gold, str):
        return None
    gold = gold.strip()
    return gold if 0 < len(gold) <= MAX_GOLD_CHARS else None


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> list:
    """The parsed gold, [] when it does not parse, raises or times out: a gold is never the completion's fault,
    so it must not turn into a 0 (failures are cached too; a parse cut by a worker's timer is not, so the rows
    of a gold that takes seconds to parse time out in every batch)."""
    # Bare LaTeX like `\sqrt{2}` is only found inside math delimiters; numbers parse either way.
    latex = gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"
    try:
        return parse(latex, fallback_mode="no_fallback", parsing_timeout=timeout)
    except (Exception, TimeoutException):
        return []


def verify_one(gold: str, candidate: str | None, timeout: int | None) -> float | None:
    """1.0 / 0.0 for one completion, None when the gold does not parse (with `candidate=None`: 0.0 or None, a
    check of the gold alone). Runs in a pool worker; never raises."""
    gold_parsed = _parse_gold(gold, timeout)
    if not gold_parsed:
        return None
    if candidate is None:
        return 0.0
    try:
        pred = parse(candidate, _PRED_CONFIG, fallback_mode="no_fallback", parsing_timeout=timeout)
        return float(bool(pred) and verify(gold_parsed, pred, timeout_seconds=timeout))
    except (Exception, TimeoutException):
        return 0.0


class _Cut(BaseException):
    """Raised by the timer's signal handler. Not an Exception, so math-verify's and sympy's `except Exception` let
    it by."""


def _cut(signum, frame):
    raise _Cut


def bounded(timer: int, signum: int, seconds: float, cut_value, fn, *args):
    """`fn(*args)` cut after `seconds` of `timer` (`cut_value` then). For pool workers: a signal handler needs the
    main thread. Here math-verify runs with its own alarms off (timeout None): each one resets the process's single
    alarm timer, which would cancel ITIMER_REAL, and one cut short by this exception could fire later, outside it."""
    signal.signal(signum, _cut)
    try:
        try:
            signal.setitimer(timer, seconds)
            return fn(*args)
        finally:
            signal.setitimer(timer, 0)
    except _Cut:  # also when it fires just as the call returns: the item merely counts as cut
        return cut_value


def verify_fast(gold: str, candidate: str | None) -> float | str | None:
    """First pass: `verify_one` within FAST_CPU_S of CPU time, else OVER_BUDGET. A CPU timer, not a wall-clock
    one, so a loaded machine does not push normal items over."""
    return bounded(signal.ITIMER_PROF, signal.SIGPROF, FAST_CPU_S, OVER_BUDGET, verify_one, gold, candidate, None)


def verify_until(gold: str, candidate: str | None, timeout: int, deadline: float) -> float | str | None:
    """Second pass: `verify_one` for at most `timeout` wall-clock seconds and never past `deadline` (the batch's,
    on `time.monotonic`, which is system-wide), else NO_RESULT. The worker frees itself at the deadline, so it is
    ready for the next batch instead of finishing math-verify's per-call alarms (up to three of them) first."""
    seconds = min(timeout, deadline - time.monotonic())
    if seconds <= 0:
        return NO_RESULT
    return bounded(signal.ITIMER_REAL, signal.SIGALRM, seconds, NO_RESULT, verify_one, gold, candidate, None)


def warm_up() -> None:
    """One parse + verify, run by each pool worker before it reports ready: math-verify's first call pays for
    lazy imports and parser set-up (0.1-0.5 s), which would otherwise eat into a batch's bound."""
    verify_one("\\frac{1}{2}", "\\boxed{0.5}", None)


def check_params(workers, timeout, batch_timeout) -> tuple[int, int, float]:
    """Validated scoring params (`batch_timeout=None` means `timeout`). `timeout` must be whole seconds:
    math-verify passes it to `signal.alarm`, and a float there silently scores correct answers 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ValueError(
            f"timeout must be an integer number of seconds >= 1 (math-verify uses signal.alarm), got {timeout!r}"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0: score in this process), got {workers!r}")
    if batch_timeout is None:
        batch_timeout = timeout
    if isinstance(batch_timeout, bool) or not (
        isinstance(batch_timeout, (int, float)) and math.isfinite(batch_timeout) and batch_timeout > 0
    ):
        raise ValueError(f"batch_timeout must be a finite number of seconds > 0, got {batch_timeout!r}")
    return workers, timeout, float(batch_timeout)


def two_pass(fast, until, args: list[tuple], workers: int, timeout: int, batch_timeout: float) -> list | None:
    """`fast(*item)` for every item in the pool (OVER_BUDGET past FAST_CPU_S of CPU), then `until(*item, timeout,
    deadline)` for the items over budget, all within `batch_timeout` (see the module docstring: a few hostile
    items cannot starve the rest); NO_RESULT where nothing came in time. None when no pool worker can start."""
    pool = get_pool(workers) if workers > 0 and args else None
    if pool is None or not pool.start():
        return None
    deadline = time.monotonic() + batch_timeout
    values = pool.map(fast, args, batch_timeout, NO_RESULT, STUCK_AFTER_S)
    if values is None:
        return None
    slow = [i for i, v in enumerate(values) if v == OVER_BUDGET]
    left = deadline - time.monotonic()
    if slow and left > 0:
        again = pool.map(until, [(*args[i], timeout, deadline) for i in slow], left, NO_RESULT, STUCK_AFTER_S)
        for i, v in zip(slow, again or []):
            values[i] = v
    return [NO_RESULT if v == OVER_BUDGET else v for v in values]


def _verify(args: list[tuple], workers: int, timeout: int, batch_timeout: float) -> list | None:
    """`verify_one(gold, candidate, timeout)` per item (NO_RESULT where none came by the batch's deadline), or None
    when nothing can be verified with a bound: no pool, and not on the main thread, where math-verify's alarms
    cannot work."""
    values = two_pass(verify_fast, verify_until, args, workers, timeout, batch_timeout)
    if values is not None:
        return values
    if threading.current_thread() is not threading.main_thread():
        return None
    return [verify_one(g, c, timeout) for g, c in args]


def score(
    completions, golds, *, workers: int, timeout: int, batch_timeout: float, name: str = "accuracy", log_metric=None
) -> list[float | None]:
    """1.0 / 0.0 per completion (None where the gold does not parse); the shared core of the accuracy rewards.

    `workers` >= 1 uses the process pool: at most `timeout` seconds per row, and the whole batch returns within
    about `batch_timeout` seconds, whatever it holds (rows without a result by then score 0). `workers=0` runs in
    this process (debugging): with `timeout` on the main thread and no batch bound; off the main thread nothing
    can bound math-verify, so rows get None. Each distinct gold is also checked on its own, ahead of the rows,
    so a row that times out still gets None when its gold does not parse.

    Every batch, rows that timed out and rows whose gold did not parse are counted: a warning when there are
    any, and through TRL's `log_metric` hook (when given) `rewards/<name>/timeouts` and
    `rewards/<name>/unparseable_gold`, so a reward silently stuck at 0 shows in the training logs.
    """
    texts = [completion_text(c) for c in completions]
    raw_golds, golds = golds, [gold_text(g) for g in golds]
    unique = list(dict.fromkeys(g for g in golds if g is not None))
    candidates = [None if g is None else extract_answer(t) for g, t in zip(golds, texts)]
    rows = [i for i, c in enumerate(candidates) if c is not None]
    args = [(g, None) for g in unique] + [(golds[i], candidates[i]) for i in rows]
    results = _verify(args, workers, timeout, batch_timeout)
    if results is None:
        logger.warning(
            "rewards: %s: no verify worker and not on the main thread, where math-verify's timeouts work: %d rows "
            "not verified (None)", name, len(texts),
        )
        return [None] * len(texts)
    gold_ok = dict(zip(unique, results))  # 0.0: parses, None: does not, NO_RESULT: not known in time
    verdicts = dict(zip(rows, results[len(unique):]))
    rewards: list[float | None] = []
    timeouts = 0
    for i, gold in enumerate(golds):
        value = None if gold is None or gold_ok[gold] is None else verdicts.get(i, 0.0)
        if value == NO_RESULT:
            value, timeouts = 0.0, timeouts + 1
        rewards.append(value)
    unparseable = [raw_golds[i] for i, v in enumerate(rewards) if v is None]
    if timeouts:
        logger.warning(
            "rewards: %s: %d of %d rows got no result within the %.1f s batch bound (or their worker died); scored 0",
            name, timeouts, len(texts), batch_timeout,
        )
    if unparseable:
        logger.warning(
            "rewards: %s: %d of %d rows have a gold answer that does not parse (e.g. %.200r); they get None "
            "(skipped), not 0", name, len(unparseable), len(texts), unparseable[0],
        )
    if log_metric is not None:
        log_metric(f"rewards/{name}/timeouts", float(timeouts))
        log_metric(f"rewards/{name}/unparseable_gold", float(len(unparseable)))
    return rewards


class Accuracy:
    """`accuracy`: 1.0 when the final answer after the think block equals the gold answer, else 0.0.

    Reads the gold answer from the `answer` column (`answer_column` to change it): LaTeX (`\\frac{1}{2}`),
    a number (`72`, `1,234`) or a `\\boxed{}` string. The completion's answer is the last `\\boxed{}` after the
    think block, else what math-verify reads at the end of the text there (`$2^{10}$`, `1/2`, `-7`); an answer
    only inside `<think>…</think>` scores 0. A gold answer that does not parse gives None for its row (TRL
    skips it); those rows and the rows that timed out are counted per batch (a warning, and metrics through
    TRL's `log_metric`; see `score`).

    Params: `workers` (pool processes; 0 = in-process, for debugging), `timeout` (integer seconds per row),
    `batch_timeout` (the wall-clock deadline of a batch, default `timeout`; must exceed the normal time of a
    batch, ~1.5 ms per completion / workers: scoring thousands of rows at once, as evaluation does, needs more).
    """

    def __init__(
        self, workers: int = 2, timeout: int = 3, batch_timeout: float | None = None, answer_column: str = "answer"
    ):
        self.workers, self.timeout, self.batch_timeout = check_params(workers, timeout, batch_timeout)
        self.answer_column = answer_column
        self.__name__ = "accuracy"

    def __call__(self, completions, **kwargs) -> list[float | None]:
        completions = list(completions or [])
        golds = column(kwargs, self.answer_column, len(completions), self.__name__)
        return score(
            completions, golds, workers=self.workers, timeout=self.timeout, batch_timeout=self.batch_timeout,
            name=self.__name__, log_metric=kwargs.get("log_metric"),
        )
