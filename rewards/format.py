"""The hybrid-mode format reward, and the helpers every reward uses to read TRL's inputs.

A /think completion must open with exactly one non-empty `<think>…</think>` block and then answer; a /no_think
completion follows the empty block the chat template already put in the prompt, so it must hold no think tag
and start with the answer, not with reasoning. Rewarding exactly that keeps RL from eroding the mode switch
that SFT taught.
"""

from __future__ import annotations

import re

from common.template import ALL_MODES, AUTO_MODE, THINK_CLOSE, THINK_OPEN

# /no_think answers must not open with a reasoning preamble. Deliberately a short, literal list of openers
# (matched case-insensitively at the start of the stripped completion): a heuristic that catches the common
# ways a model starts thinking aloud, not a classifier. "First," / "Step 1" / "Let's think" / "Okay, so" ...
_PREAMBLE = re.compile(
    r"(?:let(?:'|’)?s|let\s+(?:us|me))\s+(?:think|reason|work|solve|break|figure|start|analy[sz]e|compute|calculate|see)\b"
    r"|step\s*1\b|first(?:ly)?\b|okay\b|hmm+\b|to\s+solve\b|(?:we|i)\s+need\s+to\b",
    re.IGNORECASE,
)


def completion_text(completion) -> str:
    """The completion as one string, whatever form TRL passed it in; never raises.

    TRL passes plain strings, or for conversational data a list of messages. A tokenizer with a response
    parser may move the reasoning into `reasoning_content` (or `thinking`); it is put back inside think tags
    so the format and the "answer after the think block" rules see what the model generated. Anything
    else (None, numbers, malformed messages) reads as "".
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        return ""
    parts = []
    for message in completion:
        if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
            continue
        reasoning = message.get("reasoning_content") or message.get("thinking")
        if isinstance(reasoning, str) and reasoning:
            parts.append(f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n")
        parts.append(_content_text(message.get("content")))
    return "".join(parts)


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style [{"type": "text", "text": ...}]
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


# An empty think block the model wrote itself at the start of its answer: a direct answer under /auto_think, and
# what the template would have put before a /no_think answer.
EMPTY_BLOCK = re.compile(rf"\s*{THINK_OPEN}\s*{THINK_CLOSE}")


def normalize_mode(mode) -> str | None:
    """"think" / "no_think" / "auto_think" (a leading "/" is accepted, e.g. "/no_think"); anything else is None."""
    if not isinstance(mode, str):
        return None
    mode = mode.strip().lower().lstrip("/")
    return mode if mode in ALL_MODES else None


def decide(text: str) -> tuple[str, str]:
    """An /auto_think completion as the mode it chose: opening with an empty think block, it answered directly
    ("no_think", read from after the block, as a /no_think answer is read after the template's); anything else
    is a /think answer ("think", the whole text), well-formed or not."""
    empty = EMPTY_BLOCK.match(text)
    return ("no_think", text[empty.end() :]) if empty else ("think", text)


def chosen_modes(completions, kwargs: dict, reward: str) -> list[tuple[str, str | None]]:
    """(text, mode) per completion, the mode read from the `mode` column: /auto_think rows as the mode the
    completion chose (`decide`), so every mode-aware reward judges a direct answer as /no_think and a thought
    one as /think; None for a row whose mode is none of the three."""
    completions = list(completions or [])
    out = []
    for completion, mode in zip(completions, column(kwargs, "mode", len(completions), reward)):
        text, mode = completion_text(completion), normalize_mode(mode)
        if mode == AUTO_MODE:
            mode, text = decide(text)
        out.append((text, mode))
    return out


def column(kwargs: dict, name: str, n: int, reward: str) -> list:
    """A dataset column TRL passed as a kwarg, checked against the batch size.

    A missing or misaligned column is a wiring error of the recipe, not a property of one completion: it
    raises (naming the reward and the column) instead of silently scoring a whole run as "not applicable".
    """
    values = kwargs.get(name)
    if values is None:
        raise ValueError(f"reward {reward!r} needs the dataset column {name!r} (got columns: {sorted(kwargs)})")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"reward {reward!r}: column {name!r} has {len(values)} rows for {n} completions")
    return values


def by_mode(completions, kwargs: dict, reward: str, value) -> list[float | None]:
    """`value(text, mode)` per completion, (text, mode) from `chosen_modes`; None for a row whose mode is none
    of think, no_think, auto_think (not applicable), which TRL averages out."""
    return [None if m is None else value(text, m) for text, m in chosen_modes(completions, kwargs, reward)]


def think_format_ok(text: str) -> bool:
    """Exactly one `<think>` and one `</think>`, the block first (after whitespace), reasoning and answer non-empty."""
    body = text.lstrip()
    if not body.startswith(THINK_OPEN) or body.count(THINK_OPEN) != 1 or body.count(THINK_CLOSE) != 1:
        return False
    reasoning, _, answer = body[len(THINK_OPEN) :].partition(THINK_CLOSE)
    return bool(reasoning.strip()) and bool(answer.strip())


def reasoning_preamble(text: str) -> bool:
    """The text opens with one of the `_PREAMBLE` phrases (after whitespace)."""
    return _PREAMBLE.match(text.strip()) is not None


def no_think_format_ok(text: str) -> bool:
    """No think tag anywhere, a non-empty answer, and no reasoning preamble at its start."""
    if THINK_OPEN in text or THINK_CLOSE in text:
        return False
    return bool(text.strip()) and not reasoning_preamble(text)


class ModeFormat:
    """`format` / `mode_format`: 1.0 when the completion has the shape its mode asks for, else 0.0.

    Reads the `mode` column ("think" / "no_think"). /think: exactly one non-empty `<think>…</think>` block at
    the start, then a non-empty answer. /no_think: no think tag at all, a non-empty answer, and no reasoning
    preamble (see `_PREAMBLE`: "Let's think", "Step 1", "First,", "Okay", "Hmm", ... at the start).
    Rows whose mode is neither get None (not applicable), which TRL averages out.
    """

    def __init__(self):
        self.__name__ = "mode_format"

    def __call__(self, completions, **kwargs) -> list[float | None]:
        return by_mode(completions, kwargs, self.__name__, self.value)

    @staticmethod
    def value(text: str, mode: str) -> float:
        return float(think_format_ok(text) if mode == "think" else no_think_format_ok(text))
