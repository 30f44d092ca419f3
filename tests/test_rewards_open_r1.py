"""open-r1's shaping rewards, by registry name and from an RLVR recipe's reward_funcs: the values each documents."""

import pytest

from posttrain import rlvr
from rewards import get_reward

THINK = "<think>\nStep 1: 6 x 7.\nStep 2: that is 42.\nFinally, check it.\n</think>\nThe answer is \\boxed{42}."
NO_THINK = "The answer is \\boxed{42}."
LOOP = "<think>\nso we add the carry so we add the carry so we add the carry so we add the carry\n</think>\n42"


def test_repetition_penalty_is_trls_over_lowercased_words():
    penalty = get_reward("repetition_penalty")
    # 3-grams of "the cat sat the cat sat": 4, of which 3 distinct -> (1 - 3/4) * -1
    assert penalty(["The cat sat the CAT sat", "a b", "", None, NO_THINK]) == [-0.25, 0.0, 0.0, 0.0, 0.0]
    halved = get_reward("repetition_penalty", ngram_size=2, max_penalty=-0.5)
    # 2-grams of "a a a a": 3, 1 distinct -> (1 - 1/3) * -0.5
    assert halved([[{"role": "assistant", "content": "a a a a"}]]) == [pytest.approx(-1 / 3)]
    assert penalty([LOOP])[0] < -0.5


@pytest.mark.parametrize("params", [{"max_penalty": 0.5}, {"max_penalty": float("nan")}, {"ngram_size": 0}])
def test_repetition_penalty_refuses_bad_params(params):
    with pytest.raises(ValueError):
        get_reward("repetition_penalty", **params)


@pytest.mark.parametrize(
    "completion, mode, expected",
    [
        (THINK, "think", 1.0),
        ("<think>\nreasoning\n</think>\n", "think", 1.0),  # tags only: the answer is `format`'s business
        ("<think>reasoning</think>42", "think", 0.0),  # open-r1's tags come with their newlines
        ("<think>\nreasoning\n42", "think", 0.5),  # never closed
        ("<think>\na\n</think>\n<think>\nb\n</think>\n42", "think", 0.0),  # two blocks
        (NO_THINK, "think", 0.0),
        (NO_THINK, "no_think", 1.0),
        ("<think>\n\n</think>\n\nThe answer is 42.", "/no_think", 1.0),  # the template's empty block, written again
        ("<think>\nsix sevens\n</think>\n42", "no_think", 0.0),  # reasoning in /no_think
        ("42</think>", "no_think", 0.5),
        (NO_THINK, "auto", None),
    ],
)
def test_tag_count_scores_each_mode_against_its_shape(completion, mode, expected):
    assert get_reward("tag_count")([completion], mode=[mode]) == [expected]


@pytest.mark.parametrize(
    "completion, expected",
    [
        (THINK, 1.0),  # "Step 1:", "Step 2:", "Finally,"
        ("<think>\nFirst, add. Next, carry.\n</think>\n7", 2 / 3),
        ("<think>\nWe need:\n1. add\n2. carry\n- check\n* done\n</think>\n7", 1.0),  # numbered lines past the first
        ("<think>\nSix sevens are 42.\n</think>\n42", 0.0),
        ("Step 1: " * 100_000, 1.0),
    ],
)
def test_reasoning_steps_counts_open_r1s_markers_in_think_rows(completion, expected):
    assert get_reward("reasoning_steps")([completion], mode=["think"]) == [pytest.approx(expected)]


def test_reasoning_steps_does_not_apply_to_no_think_rows():
    assert get_reward("reasoning_steps")([THINK, THINK, THINK], mode=["no_think", None, "think"]) == [None, None, 1.0]


def test_a_recipe_uses_them_by_name_with_weights_params_and_per_mode_logs():
    script = rlvr.RLVRScriptArguments(
        reward_funcs=["accuracy", "tag_count", "reasoning_steps", "repetition_penalty"],
        reward_kwargs={"accuracy": {"workers": 0}, "repetition_penalty": {"ngram_size": 4, "max_penalty": -0.5}},
    )
    funcs = rlvr.build_rewards(script, [1.0, 0.2, 0.2, 0.5])
    assert [f.__name__ for f in funcs] == script.reward_funcs
    completions = [THINK, NO_THINK, LOOP]
    columns = {"answer": ["42", "42", "42"], "mode": ["think", "no_think", "think"], "completion_ids": [[0] * 9] * 3}
    logged = []
    values = [f(completions, **columns, log_metric=lambda k, v: logged.append((k, v))) for f in funcs]
    loop_penalty = values[3][2]
    assert values == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, None, 0.0], [0.0, 0.0, loop_penalty]]
    assert -0.5 < loop_penalty < -0.25
    assert ("rewards/reasoning_steps/think", 0.0) in logged
    assert not any(k == "rewards/reasoning_steps/no_think" for k, _ in logged)


def test_an_unknown_param_names_the_reward_in_the_recipe_error():
    script = rlvr.RLVRScriptArguments(reward_funcs=["tag_count"], reward_kwargs={"tag_count": {"weight": 2}})
    with pytest.raises(rlvr.UserError, match="reward_kwargs.*tag_count.*weight"):
        rlvr.build_rewards(script, None)
