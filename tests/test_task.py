"""The arithmetic task: answers are right (computed here independently, and checked by math-verify), traces
are correct column by column, splits never overlap, generation is deterministic, traces stay short."""

import random
import re

import pytest
from math_verify import parse, verify

from common.errors import UserError
from posttrain import task

WORD_ADD = re.compile(r"(?:buys|gave \w+) (\d+) more")
WORD_SUB = re.compile(r"(?:gives|sold) (\d+)")


def arithmetic(problem):
    """(a, op, b) read from the question text, not from the generator's trace."""
    numbers = [int(x) for x in re.findall(r"\d+", problem.question)]
    assert len(numbers) == 2, problem.question
    if problem.kind in ("add", "sub"):
        a, op, b = re.fullmatch(r"What is (\d+)([+-])(\d+)\?", problem.question).groups()
        return int(a), op, int(b)
    expected = WORD_ADD if problem.kind == "word_add" else WORD_SUB
    assert expected.search(problem.question), problem.question
    return numbers[0], "+" if problem.kind == "word_add" else "-", numbers[1]


def canonical(problem):
    a, op, b = arithmetic(problem)
    return (max(a, b), op, min(a, b)) if op == "+" else (a, op, b)


@pytest.fixture(scope="module")
def problems():
    return {split: task.generate(split, 600, seed=1) for split in task.SPLITS}


def test_answers_are_correct_and_verified_by_math_verify(problems):
    for p in problems["train"]:
        a, op, b = arithmetic(p)
        assert p.answer == str(a + b if op == "+" else a - b), p
        gold = parse(f"${p.answer}$")
        assert verify(gold, parse(task.completion(p, "think"))), p
        assert verify(gold, parse(task.completion(p, "no_think"))), p


def test_trace_restates_operands_reversed_and_every_column_line_is_right(problems):
    for p in problems["validation"]:
        a, op, b = arithmetic(p)
        first, *columns, readback = p.reasoning.split("\n")
        width = max(len(str(a)), len(str(b)))
        assert first == f"{str(a).zfill(width)[::-1]}{op}{str(b).zfill(width)[::-1]}"
        carry, digits = 0, []
        # a last carry is one more column, of zeros
        assert len(columns) == width + (len(p.answer) > width)
        for x, y, line in zip(first.split(op)[0] + "0", first.split(op)[1] + "0", columns):
            m = re.fullmatch(rf"(\d)\{op}(\d)\{op}([01])=(\d) [cb]([01])", line)
            assert m and m.group(1, 2) == (x, y) and int(m.group(3)) == carry, (p.reasoning, line)
            value = int(x) + int(y) + carry if op == "+" else int(x) - int(y) - carry
            assert int(m.group(4)) == value % 10 and int(m.group(5)) == int(not 0 <= value <= 9), line
            carry, digits = int(m.group(5)), digits + [m.group(4)]
        # the last line reads every column digit back, most-significant first (a subtraction's leading zeros
        # too); the answer is that without its leading zeros; no carry is left over
        assert carry == 0 and readback == "=" + "".join(reversed(digits)) and p.answer == str(int(readback[1:]))
    leading_zero = [p for p in problems["validation"] if re.fullmatch(r"=0\d+", p.reasoning.split("\n")[-1])]
    assert leading_zero and all(p.kind.endswith("sub") for p in leading_zero)


def test_splits_never_share_a_problem_across_seeds_and_wordings(problems):
    other_seed = {split: task.generate(split, 600, seed=2) for split in task.SPLITS}
    keys = {s: {canonical(p) for p in problems[s] + other_seed[s]} for s in task.SPLITS}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_generation_is_deterministic_distinct_and_balanced(problems):
    again = task.generate("test", 600, seed=1)
    assert again == problems["test"]
    assert task.generate("test", 600, seed=3) != again
    questions = [p.question for p in again]
    assert len(set(questions)) == len(questions)
    assert [p.level for p in again].count(1) == [p.level for p in again].count(3) == 200
    assert {p.kind for p in again} == {"add", "sub", "word_add", "word_sub"}
    # more rows extend a level's problems instead of replacing them
    assert {p.question for p in task.generate("test", 30, seed=1, levels=[2])} <= {
        p.question for p in task.generate("test", 90, seed=1, levels=[2])
    }


def test_levels_set_operand_lengths(problems):
    for p in problems["train"]:
        lo, hi = task.level_digits(p.level)
        a, _, b = arithmetic(p)
        assert lo <= len(str(a)) <= hi and lo <= len(str(b)) <= hi, p
    for p in task.generate("test", 200, levels=[0]):  # level 0: a 1-3 digit number plus or minus zero, held out
        a, op, b = arithmetic(p)
        assert b == 0 and 1 <= len(str(a)) <= 3 and p.answer == str(a) and task.split_of(a, op, b) == "test", p
    with pytest.raises(UserError, match="level 9"):
        task.generate("train", 5, levels=[9])
    with pytest.raises(UserError, match="split 'dev'"):
        task.generate("dev", 5)


def test_completions_by_mode():
    p = task.generate("train", 1, seed=0, levels=[3])[0]
    assert task.completion(p, "think") == f"<think>\n{p.reasoning}\n</think>\n\\boxed{{{p.answer}}}"
    assert task.completion(p, "no_think") == f"\\boxed{{{p.answer}}}"
    with pytest.raises(ValueError):
        task.completion(p, "maybe")


def test_wrong_answers_are_plausible_and_never_right():
    rng = random.Random(0)
    for p in task.generate("train", 300, seed=4):
        wrong = task.wrong_answer(p, rng)
        assert re.fullmatch(r"0|[1-9]\d*", wrong) and wrong != p.answer, (p, wrong)
    # 478+65: dropped carries give 433, an off-by-one digit e.g. 443; 503-498: smaller-from-larger gives 195
    for question, a, op, b, answer, bugs in [("What is 478+65?", 478, "+", 65, "543", {"433", "443"}),
                                             ("What is 503-498?", 503, "-", 498, "5", {"195", "4", "6"})]:
        p = task.Problem(question, answer, 2, task.solve(a, op, b)[0], "add" if op == "+" else "sub")
        seen = {task.wrong_answer(p, random.Random(i)) for i in range(200)}
        assert bugs <= seen and answer not in seen, seen


def test_pretraining_documents_come_from_train_only_and_hold_the_worked_answer(problems):
    docs = task.pretraining_documents(300, seed=5)
    assert docs == task.pretraining_documents(300, seed=5) and len(set(docs)) == 300
    train = {p.question: p for p in task.generate("train", 300, seed=5)}
    for doc in docs:
        question, *trace, answer = doc.split("\n")
        assert question in train and answer == f"\\boxed{{{train[question].answer}}}"
        assert "\n".join(trace) == train[question].reasoning
    held_out = {p.question for s in ("validation", "test") for p in problems[s]}
    assert not held_out & set(train)


def test_hardest_traces_stay_short_in_tokens(tiny_tokenizer):
    """Every trace character costs a token in a digit-split byte-level BPE: level 3 must stay small, inside the
    tiny pipeline's evaluation budget (96 new tokens) and RLVR's /think length budget (96)."""
    lengths = [
        len(tiny_tokenizer(task.completion(p, "think"), add_special_tokens=False)["input_ids"])
        for p in task.generate("test", 200, seed=0, levels=[3])
    ]
    assert max(lengths) <= 88, max(lengths)
