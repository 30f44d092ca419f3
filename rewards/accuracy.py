"""Math accuracy with math-verify: the final answer after the think block against the gold answer.

Why not TRL's `accuracy_reward`: it parses the whole completion, so an answer that appears only inside
`<think>…</think>` scores 1 and RL learns to hide answers in the reasoning; and it calls math-verify in the
trainer process, where `signal.alarm` timeouts need the main thread and a stuck parse stalls training. Here the
answer is cut out of the completion first (cheap, linear, in the trainer process), and only the short
candidate goes to math-verify in a `BoundedPool` (see `rewards.pool`), with math-verify's own integer
timeouts per call and a hard wall-clock bound per batch.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading

from math_verify import LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from rewards.format import THINK_CLOSE, THINK_OPEN, column, completion_text
from rewards.pool import get_pool

logger = logging.getLogger(__name__)

ANSWER_TAIL_CHARS = 4096  # the final answer is looked for in this many last characters of the answer part
MAX_ANSWER_CHARS = 1000  # a longer \boxed{} content scores 0 without reaching math-verify
MAX_GOLD_CHARS = 1000  # a longer gold answer counts as unparseable
_BOXED_TRIES = 4  # how many trailing \boxed occurrences to try when the last one is unbalanced

_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")
# ASCII digits on purpose: the gold answers are ASCII, and a digit-lookalike is not the answer.
_NUMBER = re.compile(r"(?<![0-9.,])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:/[0-9]+)?(?![0-9])")
# Default normalization: `units=True` (as in TRL) turns `\sqrt 2` into nothing parseable.
_PRED_CONFIG = [LatexExtractionConfig(boxed_match_priority=0)]

_warned: set[str] = set()


def _warn_once(key: str, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


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


def _boxed_content(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}` (trying the last few), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)][-_BOXED_TRIES:]
    for start in reversed(starts):
        depth = 1
        for brace in _BRACE.finditer(text, start):
            depth += 1 if brace.group() == "{" else -1
            if depth == 0:
                return text[start : brace.start()].strip() or None
    return None


def extract_answer(text: str) -> str | None:
    """The candidate final answer as a `\\boxed{...}` string for math-verify, or None if there is none.

    Prefers the last balanced `\\boxed{}` after the think block, else the last number there (thousands
    commas dropped: "1,234" -> 1234); both searched in the last ANSWER_TAIL_CHARS characters only, which
    keeps the cost bounded on megabyte outputs (a final answer sits at the end).
    """
    tail = answer_part(text)[-ANSWER_TAIL_CHARS:]
    if "\\boxed" in tail:
        content = _boxed_content(tail)
        if content is not None:
            return f"\\boxed{{{content}}}" if len(content) <= MAX_ANSWER_CHARS else None
    numbers = _NUMBER.findall(tail)
    return f"\\boxed{{{numbers[-1].replace(',', '')}}}" if numbers else None


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
def _parse_gold(gold: str, timeout: int | None):
    # Bare LaTeX like `\sqrt{2}` is only found inside math delimiters; numbers parse either way.
    latex = gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"
    return parse(latex, fallback_mode="no_fallback", parsing_timeout=timeout)


def verify_one(gold: str, candidate: str | None, timeout: int | None) -> float | None:
    """1.0 / 0.0 for one completion, None when the gold does not parse. Runs in a pool worker; never raises."""
    try:
        gold_parsed = _parse_gold(gold, timeout)
        if not gold_parsed:
            return None
        if candidate is None:
            return 0.0
        pred = parse(candidate, _PRED_CONFIG, fallback_mode="no_fallback", parsing_timeout=timeout)
        return float(bool(pred) and verify(gold_parsed, pred, timeout_seconds=timeout))
    except (Exception, TimeoutException):
        return 0.0


def warm_up() -> None:
    """One parse + verify, run by each pool worker before it reports ready: math-verify's first call pays for
    lazy imports and parser set-up (0.1-0.5 s), which would otherwise eat into a batch's bound."""
    verify_one("\\frac{1}{2}", "\\boxed{0.5}", 5)


def check_params(workers, timeout, batch_timeout) -> tuple[int, int, float]:
    """Validated scoring params. `timeout` must be whole seconds: math-verify passes it to `signal.alarm`, and
    a float there silently scores correct answers 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ValueError(
            f"timeout must be an integer number of seconds >= 1 (math-verify uses signal.alarm), got {timeout!r}"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0: score in this process), got {workers!r}")
    if not (isinstance(batch_timeout, (int, float)) and math.isfinite(batch_timeout) and batch_timeout > 0):
        raise ValueError(f"batch_timeout must be a finite number of seconds > 0, got {batch_timeout!r}")
    return workers, timeout, float(batch_timeout)


def score(completions, golds, *, workers: int, timeout: int, batch_timeout: float) -> list[float | None]:
    """1.0 / 0.0 per completion (None where the gold does not parse); the shared core of the accuracy rewards.

    `workers` >= 1 uses the process pool: math-verify's `timeout` per parse / verify call, and at most about
    `batch_timeout` seconds for the whole batch (pending items score 0). `workers=0` runs in this process
    (debugging): `timeout` applies only in the main thread and there is no batch bound.
    """
    texts = [completion_text(c) for c in completions]
    golds = [gold_text(g) for g in golds]
    rows = [i for i, g in enumerate(golds) if g is not None]
    args = [(golds[i], extract_answer(texts[i]), timeout) for i in rows]
    values = None
    if workers > 0 and args:
        # A worker busy this long past the deadline is not in math-verify's alarms (gold, parse, verify) any more.
        result = get_pool(workers).map(verify_one, args, batch_timeout, 0.0, stuck_after=3 * timeout + 2)
        values = result[0] if result is not None else None
    if values is None:
        if threading.current_thread() is not threading.main_thread():
            _warn_once("thread", "rewards: serial math-verify off the main thread runs without timeouts")
            args = [(g, c, None) for g, c, _ in args]
        values = [verify_one(*a) for a in args]
    rewards: list[float | None] = [None] * len(texts)
    for i, value in zip(rows, values):
        rewards[i] = value
    unparseable = [g for g in golds if g is None] + [a[0] for a, v in zip(args, values) if v is None]
    if unparseable:
        _warn_once(
            "gold",
            "rewards: %d gold answer(s) in a batch did not parse (e.g. %.200r); those rows get None (skipped), "
            "not 0. This warning is shown once.",
            len(unparseable), unparseable[0],
        )
    return rewards


class Accuracy:
    """`accuracy`: 1.0 when the final answer after the think block equals the gold answer, else 0.0.

    Reads the gold answer from the `answer` column (`answer_column` to change it): LaTeX (`\\frac{1}{2}`),
    a number (`72`, `1,234`) or a `\\boxed{}` string. The completion's answer is the last `\\boxed{}` after the
    think block, else the last number there; an answer only inside `<think>…</think>` scores 0. A gold
    answer that does not parse gives None for its row (TRL skips it) and a warning, once.

    Params: `workers` (pool processes; 0 = in-process, for debugging), `timeout` (integer seconds per
    math-verify call), `batch_timeout` (wall-clock seconds per batch; must exceed the normal time of a batch,
    ~1.5 ms per completion / workers).
    """

    def __init__(self, workers: int = 2, timeout: int = 3, batch_timeout: float = 30.0, answer_column: str = "answer"):
        self.workers, self.timeout, self.batch_timeout = check_params(workers, timeout, batch_timeout)
        self.answer_column = answer_column
        self.__name__ = "accuracy"

    def __call__(self, completions, **kwargs) -> list[float | None]:
        completions = list(completions or [])
        golds = column(kwargs, self.answer_column, len(completions), self.__name__)
        return score(completions, golds, workers=self.workers, timeout=self.timeout, batch_timeout=self.batch_timeout)
