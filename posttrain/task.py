"""The arithmetic task: verifiable addition and subtraction problems that a ~1M-parameter model learns on
2 CPU cores, and where a reasoning trace is what makes them learnable.

Why this shape (measured here, docs/facts.md; Lee et al. 2023, arXiv 2307.03381): from random init a tiny model
learns column addition when the trace restates both operands least-significant digit first and then works one
column per line; written straight out, most-significant digit first, the answer stays out of reach at 3+
digits. So a /think solution carries that trace and a /no_think solution gives the bare `\\boxed{N}`, and the
hardest level is where /think should clearly beat /no_think. For 478+65:

    874+560          operands reversed, the shorter one padded with zeros
    8+5+0=3 c1       column digits + carry in = result digit, carry out
    7+6+1=4 c1
    4+0+1=5 c0
    =543             the result digits read back up, every one   -> \\boxed{543}

A last carry gets a column of its own (99+92: `9+2+0=1 c1`, `9+9+1=9 c1`, `0+0+1=1 c0` -> 191), so the answer is
always the result digits read back, one per line. Without that line the model had to prepend the carry itself, and
that was most of what it got wrong: after SFT, 21 of 36 held-out additions with a last carry (answer a digit longer
than the operands) were wrong, against 0 of 75 without one. The read-back line keeps a subtraction's leading zeros
(1516-985: `=0531` -> \\boxed{531}): reading the columns back while skipping the top zeros was what the model then
got wrong: after SFT, 8 of its 9 wrong held-out /think answers (all 4 at level 3) were such subtractions, which are
11 of the 300 questions. With the line the answer copies it without its leading zeros: 0 of the 11 wrong in four
whole-pipeline runs.

Every line has the same width, so the carry a line needs sits at a fixed distance back. Subtraction is the
same with borrows (`3-8-0=5 b1`). The tokenizer splits digits, so every character is a token: level 3
(3-4 digit operands) takes ~66 tokens to answer under /think (at most 80).

Splits: a problem's split is a hash of its arithmetic (`a+b` with operands sorted, `a-b`), independent of the
seed and of the wording, so no train problem shows up in validation or test under any seed or template.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Sequence

from common.errors import UserError
from common.template import MODES

SPLITS = ("train", "validation", "test")
MAX_LEVEL = 8
WORD_SHARE = 0.25  # share of word problems; the rest are bare `What is a+b?`

NAMES = ("Ann", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana")
ITEMS = ("apples", "books", "coins", "stamps", "marbles", "shells", "cards", "pens")
TEMPLATES = {
    "add": ("What is {a}+{b}?",),
    "sub": ("What is {a}-{b}?",),
    "word_add": (
        "{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
        "{name} had {a} {item}. A friend gave {name} {b} more. How many {item} does {name} have?",
    ),
    "word_sub": (
        "{name} has {a} {item} and gives {b} away. How many {item} does {name} have left?",
        "{name} had {a} {item} and sold {b} of them. How many {item} are left?",
    ),
}


@dataclass
class Problem:
    question: str
    answer: str  # the integer result as plain digits
    level: int
    reasoning: str  # the think-block text, without the tags
    kind: str  # add | sub | word_add | word_sub


def level_digits(level: int) -> tuple[int, int]:
    """Operand lengths of a level: level 1 has 1-2 digit operands, level 2 has 2-3, level L has L to L+1; level 0
    adds or subtracts zero to a 1-3 digit number (`47+0`): the level a direct answer solves, by copying, where a
    trace only costs tokens (the adaptive mode's easy case). Single-digit facts were measured not to be that
    level: the 1M-parameter `tiny` model, fed 300 steps of them as /no_think rows, answered 36% of even the
    facts it trained on."""
    if not 0 <= level <= MAX_LEVEL:
        raise UserError(f"arithmetic level {level!r} is out of range (levels are 0..{MAX_LEVEL})")
    return (1, 3) if level == 0 else (level, level + 1)


def split_of(a: int, op: str, b: int) -> str:
    """The split a problem belongs to: 80% train, 10% validation, 10% test, by a hash of its arithmetic."""
    key = f"{max(a, b)}+{min(a, b)}" if op == "+" else f"{a}-{b}"
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


def solve(a: int, op: str, b: int) -> tuple[str, str]:
    """The think-block trace for `a op b` and the answer (subtraction takes a >= b)."""
    width = max(len(str(a)), len(str(b)))
    ra, rb = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    flag = "c" if op == "+" else "b"
    lines, carry, digits = [f"{ra}{op}{rb}"], 0, []
    for x, y in zip(ra, rb):
        total = int(x) + int(y) + carry if op == "+" else int(x) - int(y) - carry
        digit, carry_out = total % 10, int(not 0 <= total <= 9)
        lines.append(f"{x}{op}{y}{op}{carry}={digit} {flag}{carry_out}")
        digits.append(str(digit))
        carry = carry_out
    if carry:  # a last carry (addition only: a >= b leaves no last borrow) gets a column of its own
        lines.append(f"0{op}0{op}1=1 {flag}0")
        digits.append("1")
    readback = "".join(reversed(digits))
    lines.append(f"={readback}")
    return "\n".join(lines), str(int(readback))


def _operand(rng: random.Random, lo: int, hi: int) -> int:
    digits = rng.randint(lo, hi)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _sample(rng: random.Random, level: int) -> tuple[int, str, int, str, str]:
    lo, hi = level_digits(level)
    a, b = _operand(rng, lo, hi), _operand(rng, lo, hi) if level else 0
    op = rng.choice("+-")
    if op == "-" and a < b:
        a, b = b, a
    kind = ("word_" if rng.random() < WORD_SHARE else "") + ("add" if op == "+" else "sub")
    question = rng.choice(TEMPLATES[kind]).format(a=a, b=b, name=rng.choice(NAMES), item=rng.choice(ITEMS))
    return a, op, b, kind, question


def generate(split: str, n: int, seed: int = 0, levels: Sequence[int] = (1, 2, 3)) -> list[Problem]:
    """`n` distinct problems of `split`, balanced across `levels` (the first levels take the remainder; a level
    listed twice takes two shares), shuffled; the same arguments give the same list. Each level draws from its own
    seeded stream, so asking for more rows extends a level's problems rather than replacing them."""
    if split not in SPLITS:
        raise UserError(f"arithmetic split {split!r} is not one of {', '.join(SPLITS)}")
    levels = list(levels)
    if not levels:
        raise UserError("arithmetic: levels must name at least one level")
    for level in levels:
        level_digits(level)
    problems, seen = [], set()
    for i, level in enumerate(levels):
        want = n // len(levels) + (i < n % len(levels))
        rng, found, attempts = random.Random(f"{seed}/{split}/{level}"), 0, 0
        while found < want:
            attempts += 1
            if attempts > 100 * want + 10_000:
                raise UserError(
                    f"arithmetic level {level}: only {found} distinct {split} problems found of {want} asked; "
                    "ask for fewer rows or higher levels"
                )
            a, op, b, kind, question = _sample(rng, level)
            if question in seen or split_of(a, op, b) != split:
                continue
            seen.add(question)
            reasoning, answer = solve(a, op, b)
            problems.append(Problem(question, answer, level, reasoning, kind))
            found += 1
    random.Random(f"{seed}/{split}/order").shuffle(problems)
    return problems


def completion(problem: Problem, mode: str) -> str:
    """The assistant message content: the think block then `\\boxed{N}`, or `\\boxed{N}` alone."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    boxed = f"\\boxed{{{problem.answer}}}"
    return f"<think>\n{problem.reasoning}\n</think>\n{boxed}" if mode == "think" else boxed


def operands(problem: Problem) -> tuple[int, str, int]:
    """(a, op, b) read back from the trace's first line (the operands reversed and zero-padded)."""
    ra, op, rb = re.match(r"(\d+)([+-])(\d+)", problem.reasoning).groups()
    return int(ra[::-1]), op, int(rb[::-1])


def wrong_answer(problem: Problem, rng: random.Random) -> str:
    """A plausible wrong answer, the kind a model that half-learned the columns writes: the carries dropped
    (addition) or the smaller digit taken from the larger in every column (subtraction, the classic borrow
    bug), or one digit off by one. Never the right answer, never negative."""
    a, op, b = operands(problem)
    width = max(len(str(a)), len(str(b)))
    pairs = zip(str(a).zfill(width), str(b).zfill(width))
    buggy = "".join(str((int(x) + int(y)) % 10 if op == "+" else abs(int(x) - int(y))) for x, y in pairs)
    candidates = {str(int(buggy))}
    for pos, d in enumerate(problem.answer):
        for step in (-1, 1):
            digit = int(d) + step
            if 0 <= digit <= 9 and not (pos == 0 and digit == 0 and len(problem.answer) > 1):
                candidates.add(problem.answer[:pos] + str(digit) + problem.answer[pos + 1 :])
    candidates.discard(problem.answer)
    return rng.choice(sorted(candidates))


def pretraining_documents(n: int, seed: int = 0) -> list[str]:
    """`n` plain-text documents (question, the worked columns, the boxed answer) from the TRAIN split only,
    so pretraining never sees an evaluation problem. Recipe: `{type: generator, generator: arithmetic}`
    (pretrain/generators.py)."""
    return [f"{p.question}\n{p.reasoning}\n\\boxed{{{p.answer}}}" for p in generate("train", n, seed=seed)]
