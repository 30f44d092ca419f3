"""The adaptive mode (/auto_think): the template's third mode, the mode-aware rewards reading the mode the
completion chose, and `adaptive_accuracy` (real math-verify through the accuracy reward)."""

from types import SimpleNamespace

import pytest

from rewards import get_reward

DIRECT, THOUGHT = "<think>\n\n</think>\nThe answer is 42.", "<think>\n40 + 2 = 42\n</think>\nThe answer is 42."
WRONG_DIRECT = "<think>\n\n</think>\nThe answer is 41."


@pytest.mark.parametrize("completion, expected", [
    (DIRECT, 1.0),                                       # chose to answer directly: read as /no_think
    (THOUGHT, 1.0),                                      # chose to think: read as /think
    ("<think>\n\n</think>\nLet's think: 40 + 2.", 0.0),  # a direct answer that reasons aloud
    ("The answer is 42.", 0.0),                          # no think block at all: neither choice
    ("<think>\n40 + 2 = 42\n</think>\n", 0.0),           # thought, never answered
])
def test_format_reads_an_auto_think_completion_as_the_mode_it_chose(completion, expected):
    assert get_reward("format")([completion], mode=["/auto_think"]) == [expected]


def test_length_budget_applies_the_budget_of_the_chosen_mode():
    reward = get_reward("length_budget", think_budget=100, no_think_budget=10, chars_per_token=1.0)
    long_direct, long_thought = DIRECT + " x" * 20, THOUGHT + " x" * 20  # ~60 characters: over 10, under 100
    assert reward([long_direct, long_thought], mode=["auto_think"] * 2) == [-1.0, 0.0]


def test_adaptive_accuracy_orders_direct_over_thought_over_wrong():
    reward = get_reward("adaptive_accuracy", direct_bonus=0.25, workers=0)
    logged = {}
    got = reward([DIRECT, THOUGHT, WRONG_DIRECT, THOUGHT, DIRECT], answer=["42"] * 5,
                 mode=["auto_think", "auto_think", "auto_think", "think", "no_think"],
                 log_metric=lambda name, value: logged.update({name: value}))
    # /think and /no_think rows get plain accuracy: the mode was not theirs to choose
    assert got == [1.25, 1.0, 0.0, 1.0, 1.0]
    assert logged["rewards/adaptive_accuracy/think_rate"] == pytest.approx(1 / 3)


def test_the_collapse_guard_pays_the_minority_choice_of_each_group_early_only():
    reward = get_reward("adaptive_accuracy", direct_bonus=0.1, balance_bonus=0.2, balance_steps=10, workers=0)
    group_a, group_b = [DIRECT, THOUGHT, THOUGHT, THOUGHT], [DIRECT, DIRECT, THOUGHT, DIRECT]
    kwargs = dict(answer=["42"] * 8, mode=["auto_think"] * 8, prompts=["a"] * 4 + ["b"] * 4)
    early = reward(group_a + group_b, trainer_state=SimpleNamespace(global_step=3), **kwargs)
    # a's lone direct answer (share 1/4) and b's lone thought one earn 0.2 x (1 - 1/4) on top
    assert early == pytest.approx([1.1 + 0.15, 1.0, 1.0, 1.0, 1.1, 1.1, 1.0 + 0.15, 1.1])
    late = reward(group_a + group_b, trainer_state=SimpleNamespace(global_step=10), **kwargs)
    assert late == pytest.approx([1.1, 1.0, 1.0, 1.0, 1.1, 1.1, 1.0, 1.1])


def test_adaptive_accuracy_refuses_a_bonus_that_does_not_favour_direct_answers():
    with pytest.raises(ValueError, match="direct_bonus > 0"):
        get_reward("adaptive_accuracy", direct_bonus=0)
