"""Mode fidelity (posttrain.fidelity) on hand-written completions, and its counts in `posttrain eval`'s score."""

from posttrain import fidelity
from posttrain.evaluate import score, to_markdown

QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."


def test_leak_is_think_text_a_preamble_or_a_long_answer():
    assert not fidelity.leaks("The answer is \\boxed{72}.", 10, leak_tokens=64)
    assert fidelity.leaks("<think>\n48/2=24\n</think>\n\\boxed{72}", 12, leak_tokens=64)
    assert fidelity.leaks("</think> \\boxed{72}", 5, leak_tokens=64)
    assert fidelity.leaks("Let's think step by step. 48/2 = 24", 12, leak_tokens=64)
    assert fidelity.leaks("48 / 2 = 24 clips in May, 48 + 24 = 72 ...", 65, leak_tokens=64)


def test_empty_think_is_a_missing_or_blank_block():
    assert fidelity.empty_think("<think>\n\n</think>\nThe answer is 72.")
    assert fidelity.empty_think("The answer is 72.")
    assert fidelity.empty_think("  <think>   ")  # cut off before any reasoning
    assert not fidelity.empty_think("<think>\n48/2=24\n</think>\n72")
    assert not fidelity.empty_think("<think>\n48/2=24")  # reasoning, still open


def test_question_continuation_repeats_the_question_or_asks_one():
    # continues the user turn: more question text, or a copy of it
    assert fidelity.continues_question("How many clips did Natalia sell altogether?", QUESTION)
    assert fidelity.continues_question("Natalia sold clips to 48 of her friends in April, and so on", QUESTION)
    assert fidelity.continues_question("What is 23+45? The answer is 68.", "What is 23+45?")
    # answers, even ones that restate a few words or reason inside the block with the question's words
    assert not fidelity.continues_question("She sold 24 clips in May, so \\boxed{72}.", QUESTION)
    assert not fidelity.continues_question("<think>\nNatalia sold clips to 48 of her friends in April, and then"
                                           " 24\n</think>\n\\boxed{72}", QUESTION)
    assert not fidelity.continues_question("\\boxed{68}", "What is 23+45?")


def _row(question, mode):
    return {"prompt": [{"role": "system", "content": f"/{mode}"}, {"role": "user", "content": question}],
            "answer": "72", "mode": mode, "level": None, "source": "gsm8k"}


def test_score_counts_fidelity_per_mode():
    cases = [
        (_row(QUESTION, "think"), "<think>\n48/2=24, 48+24=72\n</think>\nThe answer is \\boxed{72}.", 20),
        (_row(QUESTION, "think"), "<think>\n\n</think>\nThe answer is \\boxed{72}.", 8),
        (_row(QUESTION, "no_think"), "The answer is \\boxed{72}.", 8),
        (_row(QUESTION, "no_think"), "<think>\n48/2=24\n</think>\n\\boxed{72}", 12),
        (_row(QUESTION, "no_think"), "How many clips did she sell in all?", 9),
        (_row(QUESTION, "no_think"), "48 + 24 = 72 so the answer is \\boxed{72}.", 40),
    ]
    rows, completions, num_tokens = zip(*cases)
    result = score(completions, rows, num_tokens=num_tokens, truncated=[False] * 6, num_samples=6, leak_tokens=32)
    think, no_think = result["modes"]["think"], result["modes"]["no_think"]
    assert (think["empty_think"], think["leak"], think["continuation"]) == (0.5, None, 0.0)
    assert (no_think["leak"], no_think["empty_think"], no_think["continuation"]) == (0.5, None, 0.25)
    assert result["by_source"]["gsm8k"]["no_think"]["leak"] == 0.5
    assert [s["leak"] for s in result["samples"]] == [None, None, False, True, False, True]
    assert "| /no_think | 4 | 75.0% | - | 75.0% | 17.2 | 0.0% | 50.0% | - | 25.0% | - |" in to_markdown(result)
