"""reasoning-gym as a prompt source (posttrain.data) and its own scorer as a reward (rewards/gym.py), through
`posttrain eval` on the tiny model: the real package, offline."""

import json
import time

import pytest

from posttrain import data
from posttrain.evaluate import main as eval_main
from posttrain.evaluate import score
from rewards import get_reward

COUNTDOWN = {"name": "reasoning_gym", "task": "countdown", "rows": 4, "seed": 1}


def test_rows_are_generated_offline_deterministic_and_tagged():
    sources = [COUNTDOWN, {"name": "reasoning_gym", "task": "basic_arithmetic", "rows": 3, "level": 2,
                           "options": {"min_digits": 2, "max_digits": 2, "min_terms": 2, "max_terms": 2}}]
    first = data.load_prompts(sources, no_think_fraction=0.5, seed=0)
    again = data.load_prompts(sources, no_think_fraction=0.5, seed=0)
    assert first.to_list() == again.to_list() and len(first) == 7
    assert set(first["source"]) == {"reasoning_gym/countdown", "reasoning_gym/basic_arithmetic"}
    assert [r["level"] for r in first if r["source"].endswith("arithmetic")] == [2, 2, 2]
    row = first[0]
    assert "Calculate" in row["prompt"][-1]["content"] and row["prompt"][0]["content"] in ("/think", "/no_think")
    assert json.loads(row["gym"]) == {"task": "countdown", "options": {}, "seed": 1, "size": 4, "index": 0}
    # the source's own seed picks other problems; other sources' rows carry no gym spec
    other = data.load_prompts([{**COUNTDOWN, "seed": 2}], no_think_fraction=0.0, seed=0)
    assert other["answer"] != first["answer"][:4]
    assert data.load_prompts([{"name": "arithmetic", "split": "test", "rows": 2}], no_think_fraction=0.0,
                             seed=0)["gym"] == ["", ""]


@pytest.mark.parametrize("spec, message", [
    ({"name": "reasoning_gym", "rows": 3}, "datasets[0].task: reasoning_gym needs task"),
    ({"name": "reasoning_gym", "task": "countdown"}, "datasets[0].rows: reasoning_gym needs rows"),
    ({**COUNTDOWN, "levels": [1]}, "datasets[0].levels: reasoning-gym problems are generated"),
    ({**COUNTDOWN, "options": [1]}, "datasets[0].options: must be a mapping"),
    ({"name": "arithmetic", "split": "test", "rows": 2, "task": "countdown"}, "datasets[0].task: applies to reasoning_gym only"),
    ({**COUNTDOWN, "task": "no_such_task"}, "reasoning_gym/no_such_task: unknown reasoning-gym task 'no_such_task'"),
    ({**COUNTDOWN, "options": {"no_such_option": 3}}, "reasoning_gym/countdown: task 'countdown': options"),
])
def test_bad_sources_name_the_key_or_the_task(spec, message):
    with pytest.raises(data.DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        data.load_prompts([spec], no_think_fraction=0.0, seed=0)


def test_the_tasks_own_scorer_bounded_on_hostile_text():
    prompts = data.load_prompts([COUNTDOWN], no_think_fraction=0.0, seed=0)
    gold = prompts["answer"]
    completions = [
        f"<think>\nsearch\n</think>\nThe answer is \\boxed{{{gold[0]}}}.",  # the reference expression
        f"<think>\nI think \\boxed{{{gold[1]}}}\n</think>\nno idea",  # right only inside the think block
        "\\boxed{9**9**9**9}",  # sympy's parse_expr never returns on this: cut at the timeout
        "",
        "a plain answer",  # a row of another source: not applicable
    ]
    reward = get_reward("gym_accuracy", timeout=1, batch_timeout=5)
    start = time.monotonic()
    values = reward(completions, gym=[*prompts["gym"], ""])
    assert time.monotonic() - start < 10
    assert values[0] == 1.0 and values[1] < 1.0 and values[2] == 0.0 and values[3] < 1.0 and values[4] is None
    # another expression reaching the same target from the same numbers scores 1.0: the task's scorer, no string match
    a, b = "42*(30 - 4 - 23)", "(30 - 23 - 4)*42"
    assert gold[1] == a and reward([f"\\boxed{{{b}}}"], gym=[prompts["gym"][1]]) == [1.0]


def test_a_few_answers_that_stick_the_scorer_in_c_code_cost_their_rows_and_their_chunks_at_most():
    gym = json.dumps({"task": "countdown", "options": {}, "seed": 1, "size": 4, "index": 0})
    right = "<think>\nx\n</think>\nThe answer is \\boxed{94*4 - 61 - 6}."
    completions = [right] * 64
    for i in (5, 20, 40, 60):  # sympy never returns on these, and ignores signals while it tries
        completions[i] = "\\boxed{1e999999}" if i % 2 else "\\boxed{9**9**9**9}"
    reward = get_reward("gym_accuracy", timeout=1, batch_timeout=5)
    assert reward([right], gym=[gym]) == [1.0]  # the workers warmed up
    start = time.monotonic()
    values = reward(completions, gym=[gym] * 64)
    assert time.monotonic() - start < 5 + 2
    assert [values[i] for i in (5, 20, 40, 60)] == [0.0] * 4
    honest = [v for i, v in enumerate(values) if i not in (5, 20, 40, 60)]
    # a stuck worker also loses the rest of its chunk (64 rows on 2 workers: chunks of 4), never more
    assert set(honest) <= {0.0, 1.0} and honest.count(1.0) >= 60 - 4 * 3


def test_eval_scores_gym_rows_with_their_task_and_counts_only_full_marks():
    prompts = data.load_prompts([COUNTDOWN], no_think_fraction=0.0, seed=0).to_list()[:2]
    completions = [f"<think>\nx\n</think>\n\\boxed{{{prompts[0]['answer']}}}", "<think>\nx\n</think>\n\\boxed{1+1}"]
    result = score(completions, prompts, num_tokens=[10, 10], truncated=[False, False])
    assert result["by_source"]["reasoning_gym/countdown"]["think"]["accuracy"] == 0.5  # partial credit counts 0


def test_posttrain_eval_runs_a_reasoning_gym_source_offline(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    eval_main(["--model_name_or_path", str(tiny_model_dir), "--max_new_tokens", "4",
               "--datasets", json.dumps([{**COUNTDOWN, "rows": 2}]), "--output_json", str(out)])
    result = json.loads(out.read_text())
    per_mode = result["by_source"]["reasoning_gym/countdown"]
    assert per_mode["think"]["n"] == 2 and per_mode["no_think"]["n"] == 2
    assert per_mode["think"]["accuracy"] == 0.0  # a random model does not solve countdown
