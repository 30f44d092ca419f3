"""Mode fidelity: the ways a hybrid model breaks its switch that adherence alone does not name.

Users of hybrid models report that "/no_think" still thinks sometimes, that "/think" sometimes writes an empty
block and answers at once, and that models continue the user's question instead of answering it. Each is a
plain test on one completion, counted per mode by `posttrain eval`:
- leak (/no_think): any think tag, a reasoning preamble ("Let's think", "Step 1", "First,"; the format reward's
  list), or an answer longer than `leak_tokens` -- a direct answer is a few tokens, reasoning is not;
- empty think (/think): no reasoning -- the block is empty or missing;
- question continuation (both): the answer, outside any think block, repeats a run of the question's words
  (8, or the whole question when shorter) or its first line is itself a question.
Heuristics on text, deliberately simple and literal, so a count can be checked by reading the completions.
"""

from __future__ import annotations

import re

from common.template import THINK_CLOSE, THINK_OPEN
from rewards.format import reasoning_preamble

LEAK_TOKENS = 64  # a /no_think answer longer than this reasons (direct answers here: 6-15 tokens)
REPEATED_WORDS = 8  # a run this long (or the whole question, if shorter) copied from the question
_WORD = re.compile(r"[a-z0-9]+(?:[.,'][a-z0-9]+)*")


def leaks(text: str, num_tokens: int, leak_tokens: int) -> bool:
    """A /no_think completion that reasons anyway."""
    return THINK_OPEN in text or THINK_CLOSE in text or reasoning_preamble(text) or num_tokens > leak_tokens


def empty_think(text: str) -> bool:
    """A /think completion with no reasoning: no `<think>` block first, or one holding only whitespace."""
    body = text.lstrip()
    return not body.startswith(THINK_OPEN) or not body[len(THINK_OPEN):].partition(THINK_CLOSE)[0].strip()


def answer_text(text: str) -> str:
    """The completion outside its think block (all of it when there is none)."""
    return text.rpartition(THINK_CLOSE)[2] if THINK_CLOSE in text else text


def continues_question(text: str, question: str) -> bool:
    """The answer repeats the question (a run of its words) or asks a question of its own on its first line."""
    answer = answer_text(text).strip()
    first_line = answer.splitlines()[0].strip() if answer else ""
    if first_line.endswith("?"):
        return True
    asked, said = _WORD.findall(question.lower()), _WORD.findall(answer.lower())
    n = min(REPEATED_WORDS, len(asked))
    if n < 2:
        return False
    runs = {tuple(asked[i:i + n]) for i in range(len(asked) - n + 1)}
    return any(tuple(said[i:i + n]) in runs for i in range(len(said) - n + 1))
