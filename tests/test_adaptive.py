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


def test_rlvr_trains_auto_think_prompts_with_adaptive_accuracy(tiny_model_dir, tmp_path):
    """A prompt source in /auto_think beside a mixed one: the prompts carry the flag and nothing is prefilled,
    GRPO runs with `adaptive_accuracy`, and the batch's think rate and the per-mode metrics reach TRL's logs."""
    import json

    import yaml

    from posttrain import rlvr

    recipe = {
        "model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "rlvr"),
        "datasets": [{"name": "arithmetic", "split": "train", "rows": 4, "levels": [1], "mode": "auto_think"},
                     {"name": "arithmetic", "split": "train", "rows": 4, "levels": [2]}],
        "no_think_fraction": 0.5, "reward_funcs": ["adaptive_accuracy", "format"],
        "reward_kwargs": {"adaptive_accuracy": {"workers": 0, "balance_steps": 1}},
        "num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 8, "max_steps": 4,
        "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 0,
    }
    (tmp_path / "rlvr.yaml").write_text(yaml.safe_dump(recipe))
    assert rlvr.main(["--config", str(tmp_path / "rlvr.yaml")]) == 0
    record = json.loads((tmp_path / "rlvr" / "posttrain_run.json").read_text())
    assert record["data"]["rows_per_mode"] == {"think": 2, "no_think": 2, "auto_think": 4}
    steps = [h for h in json.loads((tmp_path / "rlvr" / "log_history.json").read_text()) if "loss" in h]
    rates = [h["rewards/adaptive_accuracy/think_rate"] for h in steps if "rewards/adaptive_accuracy/think_rate" in h]
    assert rates and all(0.0 <= r <= 1.0 for r in rates)
    assert any("rewards/adaptive_accuracy/auto_think" in h for h in steps)


def test_a_fixed_mode_is_for_prompt_sources_only():
    from common.errors import UserError
    from posttrain import data

    prompts = data.load_prompts([{"name": "arithmetic", "rows": 3, "mode": "auto_think"}], no_think_fraction=0.5, seed=0)
    assert [row["prompt"][0] for row in prompts] == [{"role": "system", "content": "/auto_think"}] * 3
    with pytest.raises(UserError, match="'mode' fixes the mode of prompt sources"):
        data.load_conversations([{"name": "arithmetic", "rows": 3, "mode": "no_think"}], no_think_fraction=0.5, seed=0)
    with pytest.raises(UserError, match="'mode' fixes the mode of prompt sources"):
        data.load_preferences([{"name": "arithmetic", "rows": 3, "mode": "auto_think"}], no_think_fraction=0.5, seed=0)
    with pytest.raises(UserError, match=r"datasets\[0\]\.mode: must be think \| no_think \| auto_think"):
        data.load_prompts([{"name": "arithmetic", "rows": 3, "mode": "auto"}], no_think_fraction=0.5, seed=0)


def test_auto_think_conversations_show_both_choices_and_train_on_the_decision(tiny_tokenizer, tmp_path):
    """An auto_think SFT source: every row flagged /auto_think, `no_think_fraction` of them answering directly
    whatever the level, the rest thinking; the loss mask covers the think block, empty or not (the decision
    tokens); a user row's own /no_think flag gives way to the source's mode; manual rows mix as before."""
    import json

    from posttrain import data

    sources = [{"name": "arithmetic", "rows": 40, "levels": [0, 3], "mode": "auto_think"},
               {"name": "arithmetic", "rows": 20, "levels": [1]}]
    rows = data.load_conversations(sources, no_think_fraction=0.25, seed=0)
    assert data.rows_per_mode(rows) == {"think": 15, "no_think": 5, "auto_think": 40}
    auto = [row for row in rows if row["mode"] == "auto_think"]
    assert all(row["messages"][0] == {"role": "system", "content": "/auto_think", "reasoning_content": None,
                                      "tool_calls": None} for row in auto)
    direct = [row for row in auto if row["messages"][-1]["reasoning_content"] is None]
    assert len(direct) == 10  # a quarter, across both levels
    assert {len(row["messages"][1]["content"]) < 20 for row in direct} == {True, False}  # levels 0 and 3 both

    for row, starts in ((direct[0], "<think>\n\n</think>\n\\boxed{"), (auto[auto.index(next(
            r for r in auto if r["messages"][-1]["reasoning_content"]))], "<think>\n")):
        out = tiny_tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True, **row["chat_template_kwargs"])
        trained = tiny_tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
        assert "Reasoning Mode: /auto_think" in tiny_tokenizer.decode(out["input_ids"])
        assert trained.startswith(starts) and trained.endswith("<|im_end|>"), trained

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief. /no_think"},
                                             {"role": "user", "content": "2+2?"},
                                             {"role": "assistant", "content": "4"}]}) + "\n")
    row = data.load_conversations([{"name": "messages", "path": str(chat), "mode": "auto_think"}],
                                  no_think_fraction=0.0, seed=0)[0]
    assert row["mode"] == "auto_think" and row["messages"][0]["content"] == "Be brief. /auto_think"


def test_a_stage_may_train_auto_think_alone_but_not_lose_a_manual_mode():
    """All-/auto_think prompts are a whole mixture (the model picks the mode); a mixture with manual rows still
    fails when one of its modes is empty."""
    from common.errors import UserError
    from posttrain import data

    def script(**source):
        return SimpleNamespace(datasets=[{"name": "arithmetic", "rows": 4, **source}], no_think_fraction=0.5)

    rows, record = data.stage_dataset("rlvr", "prompts", script(mode="auto_think"), None, seed=0, max_length=None)
    assert len(rows) == 4 and record["rows_per_mode"] == {"think": 0, "no_think": 0, "auto_think": 4}
    with pytest.raises(UserError, match="no no_think rows left"):
        data.stage_dataset("rlvr", "prompts", script(mode="think"), None, seed=0, max_length=None)


def test_route_labels_each_question_by_the_checkpoints_direct_answer(tiny_model_dir, tmp_path):
    """`posttrain route`: a right /no_think answer makes a direct row, a wrong one a thought; SFT then reads the
    file with each row keeping its choice (no coin), the flag not doubled, and the manual rows mixed as before."""
    import json

    import yaml

    from posttrain import data, pairs, route

    conversations = data.load_conversations([{"name": "arithmetic", "rows": 2, "levels": [3]}],
                                            no_think_fraction=0.0, seed=0)
    asked, references = pairs.question_rows(conversations, mode="no_think")
    rows = route.routed_rows(asked, references, [{"accuracy": 1.0}, {"accuracy": 0.0}])
    assert [row["messages"][0] for row in rows] == [{"role": "system", "content": "/auto_think"}] * 2
    assert "reasoning_content" not in rows[0]["messages"][-1]
    assert rows[1]["messages"][-1]["reasoning_content"] == conversations[1]["messages"][-1]["reasoning_content"]

    recipe = {"model_name_or_path": str(tiny_model_dir), "output": str(tmp_path / "routes.jsonl"),
              "datasets": [{"name": "arithmetic", "rows": 6, "levels": [1]}], "max_new_tokens": 4}
    (tmp_path / "route.yaml").write_text(yaml.safe_dump(recipe))
    assert route.main(["--config", str(tmp_path / "route.yaml")]) == 0
    written = [json.loads(line) for line in (tmp_path / "routes.jsonl").read_text().splitlines()]
    assert len(written) == 6 and all(row["messages"][0]["content"] == "/auto_think" for row in written)

    sources = [{"name": "messages", "path": str(tmp_path / "routes.jsonl")}, {"name": "arithmetic", "rows": 4}]
    mixed = data.load_conversations(sources, no_think_fraction=0.5, seed=0)
    assert data.rows_per_mode(mixed) == {"think": 2, "no_think": 2, "auto_think": 6}
    kept = [row["messages"] for row in mixed if row["mode"] == "auto_think"]
    assert sorted(bool(m[-1]["reasoning_content"]) for m in kept) == sorted(
        "reasoning_content" in row["messages"][-1] for row in written)
    assert all(m[0]["content"] == "/auto_think" for m in kept)


def test_an_auto_think_preference_row_is_refused_by_name(tmp_path):
    import json

    from common.errors import UserError
    from posttrain import data

    path = tmp_path / "pairs.jsonl"
    prompt = [{"role": "system", "content": "/auto_think"}, {"role": "user", "content": "1+1?"}]
    path.write_text(json.dumps({"prompt": prompt, "chosen": "2", "rejected": "3"}) + "\n")
    with pytest.raises(UserError, match=r"pairs.jsonl.*row 1.*'prompt\[0\]\.content': /auto_think preference rows"):
        data.load_preferences([{"name": "preferences", "path": str(path)}], no_think_fraction=0.5, seed=0)
