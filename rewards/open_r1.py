"""open-r1's shaping rewards (huggingface/open-r1, `src/open_r1/rewards.py`), for the hybrid /think and /no_think
format: the n-gram repetition penalty, the tag count and the reasoning-steps count.

open-r1 writes every completion as `<think>…</think><answer>…</answer>` and counts steps everywhere. Here a
/think completion is `<think>\\n…\\n</think>\\n` then the answer, and a /no_think completion follows the empty
block the chat template already put in the prompt: so the tag count scores each mode against its own shape,
and steps are counted in /think completions only (rewarding them in /no_think would pay for the reasoning
preamble the `format` reward forbids there).
"""

from __future__ import annotations

import itertools
import math
import re

from common.template import THINK_CLOSE, THINK_OPEN
from rewards.format import EMPTY_BLOCK, by_mode, completion_text

# open-r1's markers: "Step 1:", a numbered line ("1."), a bullet ("- ", "* "), and ordinal transitions. `^` is
# per line here (open-r1 compiles it without MULTILINE, so only a list starting the completion counted).
_STEPS = re.compile(r"Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,", re.MULTILINE)
_STEPS_FOR_FULL = 3  # open-r1's "magic number": three steps or more earn the full reward


class RepetitionPenalty:
    """`repetition_penalty`: open-r1's n-gram repetition penalty, from 0 (no n-gram repeated) down to
    `max_penalty` (every n-gram a repeat): (1 - unique n-grams / n-grams) * max_penalty.

    The values are TRL's `trl.rewards.get_repetition_penalty_reward` (called here). As in open-r1 the n-grams
    are of lowercased words, not TRL's token ids: the value then does not depend on the tokenizer, and is the
    same in training and in offline scoring, where there are no ids. A completion shorter than `ngram_size`
    words scores 0.
    """

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0):
        from trl.rewards import get_repetition_penalty_reward  # here: pool workers import this package, not TRL

        if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size < 1:
            raise ValueError(f"ngram_size must be an integer >= 1, got {ngram_size!r}")
        if not (isinstance(max_penalty, (int, float)) and math.isfinite(max_penalty)):
            raise ValueError(f"max_penalty must be a finite number <= 0, got {max_penalty!r}")
        self.ngram_size, self.max_penalty = ngram_size, max_penalty
        self._trl = get_repetition_penalty_reward(ngram_size=ngram_size, max_penalty=max_penalty)  # checks <= 0
        self.__name__ = "repetition_penalty"

    def __call__(self, completions, **kwargs) -> list[float]:
        # TRL's counts n-grams of any hashable items: words instead of ids.
        return self._trl([completion_text(c).lower().split() for c in completions or []])


def tag_count(text: str, mode: str) -> float:
    """0.5 per think tag in its place. /think: exactly one "<think>\\n" and one "\\n</think>\\n" (open-r1's
    strings; its <answer> tags are not part of this format, so each tag is worth 0.5, not 0.25). /no_think: no
    "<think>" and no "</think>", after one empty block at the start, which counts as none."""
    if mode == "think":
        return 0.5 * (text.count(f"{THINK_OPEN}\n") == 1) + 0.5 * (text.count(f"\n{THINK_CLOSE}\n") == 1)
    empty = EMPTY_BLOCK.match(text)
    rest = text[empty.end() :] if empty else text
    return 0.5 * (THINK_OPEN not in rest) + 0.5 * (THINK_CLOSE not in rest)


class TagCount:
    """`tag_count`: open-r1's tag count for the hybrid format, partial credit (0, 0.5, 1) for each think tag
    where the row's mode wants it (see `tag_count`): a softer signal than `format`'s all or nothing, and
    lenient where `format` is not: /no_think may open with an empty think block. Reads `mode`; a row whose mode
    is neither think nor no_think gets None."""

    def __init__(self):
        self.__name__ = "tag_count"

    def __call__(self, completions, **kwargs) -> list[float | None]:
        return by_mode(completions, kwargs, self.__name__, tag_count)


class ReasoningSteps:
    """`reasoning_steps`: open-r1's reward for step-by-step reasoning, min(1, markers / 3), the markers being
    "Step N:", a numbered line, a "-" or "*" bullet, "First,", "Second,", "Next," and "Finally,".

    /think rows only (the whole completion, as open-r1 counts it); /no_think rows and rows whose mode is neither
    get None, so this reward never pushes reasoning into /no_think answers. Reads `mode`.
    """

    def __init__(self):
        self.__name__ = "reasoning_steps"

    def __call__(self, completions, **kwargs) -> list[float | None]:
        return by_mode(completions, kwargs, self.__name__, self.value)

    @staticmethod
    def value(text: str, mode: str) -> float | None:
        if mode != "think":
            return None
        # Stops at the third marker: a long completion costs one scan at most.
        found = sum(1 for _ in itertools.islice(_STEPS.finditer(text), _STEPS_FOR_FULL))
        return found / _STEPS_FOR_FULL
