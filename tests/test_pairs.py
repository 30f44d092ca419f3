"""`posttrain pairs`: a checkpoint's own mode violations become DPO pairs against the data's answers."""

import json

import pytest
import yaml

from common.errors import UserError
from posttrain import data, pairs

LOOP = "<think>\n2+3=5\n2+3=5\n2+3=5"
REFERENCE = {"role": "assistant", "content": "The answer is \\boxed{5}.", "reasoning_content": "2+3=5"}


def test_violation_turn_keeps_the_broken_reasoning_and_the_answer_it_reached():
    loop = pairs.violation_turn(LOOP, REFERENCE)  # never closed: the data's answer stands in
    assert loop == {"role": "assistant", "content": REFERENCE["content"], "reasoning_content": "2+3=5\n2+3=5\n2+3=5"}
    thought = pairs.violation_turn("<think>\nhm\n</think>\n\\boxed{6}", REFERENCE)  # a block under /no_think
    assert thought["reasoning_content"] == "hm" and thought["content"] == "\\boxed{6}"
    direct = pairs.violation_turn("\\boxed{5}", REFERENCE)  # no block under /think
    assert direct["reasoning_content"] is None and direct["content"] == "\\boxed{5}"


def test_only_answers_that_broke_their_mode_become_pairs():
    rows = [{"prompt": [{"role": "system", "content": f"/{m}"}, {"role": "user", "content": "What is 2+3?"}],
             "mode": m} for m in ("think", "think", "no_think", "no_think")]
    plain = {**REFERENCE, "reasoning_content": None}
    samples = [{"completion": LOOP, "adherent": 0.0},
               {"completion": "<think>\n2+3=5\n</think>\nThe answer is \\boxed{5}.", "adherent": 1.0},
               {"completion": "<think>\n2+3=5\n</think>\n\\boxed{5}", "adherent": 0.0},
               {"completion": "\\boxed{5}", "adherent": 1.0}]
    made = pairs.violation_pairs(rows, [REFERENCE, REFERENCE, plain, plain], samples)
    assert [p["mode"] for p in made] == ["think", "no_think"]
    assert made[0]["prompt"] == [{"role": "user", "content": "What is 2+3?"}]  # the mode flag is the row's `mode`
    assert made[0]["chosen"] == [REFERENCE] and made[1]["chosen"] == [plain]
    assert made[1]["rejected"][0]["reasoning_content"] == "2+3=5"


def test_cli_writes_pairs_that_the_dpo_stage_reads(tiny_model_dir, tmp_path):
    out = tmp_path / "pairs.jsonl"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--output", str(out), "--max_new_tokens", "8",
            "--datasets", "[{name: arithmetic, split: train, rows: 6, levels: [1]}]", "--no_think_fraction", "0.5"]
    assert pairs.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # An untrained model rambles past 8 tokens: every answer breaks its mode, in both modes.
    assert len(rows) == 6 and {r["mode"] for r in rows} == {"think", "no_think"}
    for row in rows:
        think = row["mode"] == "think"
        assert bool(row["chosen"][0]["reasoning_content"]) == think and row["rejected"] != row["chosen"]
    loaded = data.load_preferences([{"name": "preferences", "path": str(out)}], no_think_fraction=0.5, seed=0)
    assert sorted(loaded["mode"]) == sorted(r["mode"] for r in rows)
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]  # no temporary file left


def test_cli_refuses_a_recipe_without_output_or_checkpoint(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="'output'"):
        pairs.main(["--model_name_or_path", str(tiny_model_dir)])
    with pytest.raises(UserError, match="not a checkpoint"):
        pairs.main(["--model_name_or_path", str(tmp_path), "--output", str(tmp_path / "p.jsonl")])
    assert not list(tmp_path.iterdir())


def test_smollm2_recipes_parse_under_their_commands():
    """The shipped SmolLM2-135M pairs, DPO and eval recipes are valid for their commands (no unknown or
    out-of-range key), and DPO reads the file pairs writes from the model SFT writes."""
    from pathlib import Path

    from trl import DPOConfig, ModelConfig

    from common.recipe import parse_recipe
    from posttrain import dpo, evaluate, stage

    recipes = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m"
    (made,) = parse_recipe([pairs.PairsArguments], ["--config", str(recipes / "pairs.yaml")])
    script, training, model_args = stage.parse_args(
        (dpo.DPOScriptArguments, DPOConfig, ModelConfig), ["--config", str(recipes / "dpo.yaml")], "posttrain dpo",
        dpo.DPO_DEFAULTS)
    sft_out = yaml.safe_load((recipes / "sft.yaml").read_text())["output_dir"]
    (evaluated,) = parse_recipe([evaluate.EvalArguments], ["--config", str(recipes / "eval.yaml"),
                                                           "--model_name_or_path", sft_out])
    assert made.model_name_or_path == model_args.model_name_or_path == sft_out
    assert script.datasets == [{"name": "preferences", "path": made.output}]
    assert training.loss_type == ["apo_zero", "sft"] and training.learning_rate is None  # 0.1 x SFT's
    assert evaluated.temperature == 0.0 and evaluated.max_new_tokens == made.max_new_tokens
