"""The midtrain, SFT and DPO stages and their shared plumbing (posttrain.stage): real TRL trainers on the tiny
random model, real data adapters, the real chat template; every run goes through the stage's own `build`/`main`."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, TrainerCallback

from common import outputs
from common.errors import UserError
from posttrain import data, dpo, midtrain, sft, stage

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"name": "arithmetic", "split": "train", "rows": 16, "levels": [1]}]


def _argv(tmp_path: Path, name: str, **keys) -> list[str]:
    """A recipe file for a 2-step run of batch 4, written to tmp_path; returns `--config` argv."""
    recipe = {
        "output_dir": str(tmp_path / name), "datasets": ROWS, "max_steps": 2, "per_device_train_batch_size": 4,
        "max_length": 512, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 0,
        "disable_tqdm": True, **keys,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return ["--config", str(path)]


def _parse(module, argv):
    from trl import DPOConfig, ModelConfig, SFTConfig

    types = {
        sft: (sft.SFTScriptArguments, SFTConfig, ModelConfig),
        midtrain: (midtrain.MidtrainScriptArguments, SFTConfig, ModelConfig),
        dpo: (dpo.DPOScriptArguments, DPOConfig, ModelConfig),
    }[module]
    defaults = {sft: sft.SFT_DEFAULTS, midtrain: midtrain.MIDTRAIN_DEFAULTS, dpo: dpo.DPO_DEFAULTS}[module]
    return stage.parse_args(types, argv, "test", defaults)


def _digest(directory: Path) -> str:
    return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory, tiny_model_dir) -> Path:
    """`posttrain sft` for 2 steps from the tiny random model: a complete stage output."""
    tmp = tmp_path_factory.mktemp("sft_run")
    sft.main(_argv(tmp, "sft", model_name_or_path=str(tiny_model_dir), learning_rate=2e-3))
    return tmp / "sft"


# ------------------------------------------------------------------------------------------------ recipes


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults apply only where CUDA is absent")
def test_cpu_defaults_sit_under_the_recipe(tmp_path):
    _, training, _ = _parse(sft, _argv(tmp_path, "a"))
    assert training.bf16 is False and training.activation_checkpointing is False
    assert training.assistant_only_loss is True  # the SFT stage default
    assert training.use_cpu is not torch.accelerator.is_available()  # which lets a recipe ask for CPU bf16 autocast
    _, training, _ = _parse(sft, _argv(tmp_path, "b", activation_checkpointing=True, bf16=True))
    assert training.activation_checkpointing is True and training.bf16 is True  # the recipe wins


@pytest.mark.parametrize("name", ["midtrain", "sft", "dpo"])
def test_smollm3_recipes_parse(name):
    module = {"midtrain": midtrain, "sft": sft, "dpo": dpo}[name]
    script, training, model_args = _parse(module, ["--config", str(ROOT / "recipes" / "smollm3" / f"{name}.yaml")])
    assert model_args.model_name_or_path and script.datasets
    assert training.activation_checkpointing is True  # set for the GPU: wins over the CPU default
    if name == "dpo":
        assert training.loss_type == ["apo_zero"] and training.learning_rate is None  # derived: 0.1 x SFT
    else:
        assert training.packing and training.packing_strategy == "bfd"
        assert training.assistant_only_loss is (name == "sft")


def test_qlora_without_bitsandbytes_fails_before_any_work(tmp_path, tiny_model_dir, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    argv = _argv(tmp_path, "q", model_name_or_path=str(tiny_model_dir), use_peft=True, load_in_4bit=True)
    with pytest.raises(UserError, match=r"load_in_4bit.*bitsandbytes.*posttrain\[qlora\]"):
        sft.build("sft", *_parse(sft, argv))
    with pytest.raises(UserError, match="use_peft"):
        sft.build("sft", *_parse(sft, _argv(tmp_path, "q2", model_name_or_path=str(tiny_model_dir), load_in_4bit=True)))
    assert not (tmp_path / "q").exists() and not (tmp_path / "q.partial").exists()


# ------------------------------------------------------------------------------------- what TRL trains on


def test_sft_labels_cover_exactly_the_assistant_turns_in_both_modes(tmp_path, tiny_model_dir):
    run = sft.build("sft", *_parse(sft, _argv(tmp_path, "s", model_name_or_path=str(tiny_model_dir),
                                              per_device_train_batch_size=16)))
    tok = run.tokenizer
    assert len(run.trainer.train_dataset) == 16
    source = {r["messages"][0]["content"]: r for r in data.load_conversations(ROWS, no_think_fraction=0.5, seed=0)}
    batch = next(iter(run.trainer.get_train_dataloader()))
    assert "attention_mask" in batch  # padded batches, not packed (the SFT default on CPU)
    seen = set()
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        ids, labels = ids[mask.bool()], labels[mask.bool()]
        trained = (labels != -100).nonzero().flatten()
        assert len(trained) and trained.tolist() == list(range(trained[0], trained[-1] + 1))  # one span
        assert torch.equal(labels[trained], ids[trained])
        prompt, target = tok.decode(ids[: trained[0]]), tok.decode(ids[trained])
        question = prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        row = source[question]
        reply = row["messages"][-1]
        if row["mode"] == "think":
            assert prompt.endswith("<|im_start|>assistant\n")
            assert target == f"<think>\n{reply['reasoning_content']}\n</think>\n{reply['content']}<|im_end|>"
        else:
            assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n")  # empty block: in the prompt
            assert target == f"{reply['content']}<|im_end|>"
        seen.add(row["mode"])
    assert seen == {"think", "no_think"}


def test_midtrain_packs_documents_with_restarting_positions_and_no_cross_attention(tmp_path, tiny_model_dir):
    argv = _argv(tmp_path, "m", model_name_or_path=str(tiny_model_dir), per_device_train_batch_size=2)
    run = sft.build("midtrain", *_parse(midtrain, argv))
    batch = next(iter(run.trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free: one flat row
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist()
    assert len(starts) >= 4  # several documents, positions restarting at each
    ends = starts[1:] + [len(positions)]
    assert all(torch.equal(positions[s:e], torch.arange(e - s)) for s, e in zip(starts, ends))
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    masked = (labels == -100).nonzero().flatten().tolist()
    assert masked == starts and torch.equal(labels[labels != -100], ids[labels != -100])  # loss on every token
    # Block-diagonal attention: each document's logits in the pack equal its logits computed alone.
    model = run.trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for s, e in zip(starts, ends):
            alone = model(input_ids=ids[None, s:e], use_cache=False).logits[0]
            assert torch.allclose(packed[s:e], alone, atol=1e-4), (s, e)
    # ... and the run saves a plain checkpoint with its record
    run.run()
    record = json.loads((tmp_path / "m" / outputs.RUN_RECORD).read_text())
    assert record["stage"] == "midtrain" and record["data"]["rows_per_mode"] == {"think": 16, "no_think": 0}
    assert record["recipe"]["SFTConfig"]["packing"] is True and record["global_step"] == 2
    AutoModelForCausalLM.from_pretrained(tmp_path / "m", use_safetensors=True)


def test_padding_free_sft_trains_the_padded_losses_and_still_drops_overlong_rows(tmp_path, tiny_model_dir):
    def row(i, mode, reasoning):
        reply = {"role": "assistant", "content": str(2 * i), "reasoning_content": reasoning}
        return json.dumps({"messages": [{"role": "user", "content": f"{i}+{i}?"}, reply], "mode": mode}) + "\n"

    # 16 short rows in both modes and one /think row longer than max_length
    lines = [row(i, "no_think", None) + row(i, "think", f"{i} plus {i}") for i in range(8)]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(lines) + row(8, "think", "step " * 400))
    losses = {}
    for padding_free in (False, True):
        argv = _argv(tmp_path, f"pf{padding_free}", model_name_or_path=str(tiny_model_dir), max_length=300,
                     datasets=[{"name": "messages", "path": str(rows)}], padding_free=padding_free)
        run = sft.build("sft", *_parse(sft, argv))
        assert len(run.trainer.train_dataset) == 16 and run.record["data"]["dropped_per_mode"]["think"] == 1
        batch = next(iter(run.trainer.get_train_dataloader()))
        assert ("attention_mask" in batch) != padding_free
        run.trainer.train()
        losses[padding_free] = [log["loss"] for log in run.trainer.state.log_history if "loss" in log]
        run.out.abandon()
    # padding-free batches are one flat row with restarting positions: block-diagonal attention, the same loss
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], rel=1e-4)


@pytest.mark.parametrize("name, module", [("sft", sft), ("midtrain", midtrain)])
def test_token_metrics_off_trains_the_same_losses_and_logs_the_loss_only(tmp_path, tiny_model_dir, name, module):
    logs = {}
    for metrics in (True, False):
        argv = _argv(tmp_path, f"m{metrics}", model_name_or_path=str(tiny_model_dir), token_metrics=metrics)
        run = sft.build(name, *_parse(module, argv))
        run.trainer.train()
        logs[metrics] = [log for log in run.trainer.state.log_history if "loss" in log]
        run.out.abandon()
    assert {"entropy", "mean_token_accuracy"} <= set(logs[True][0])
    assert not {"entropy", "mean_token_accuracy"} & set(logs[False][0])
    # the model's own loss over the same labels (padded rows for sft, packed documents for midtrain)
    assert [log["loss"] for log in logs[False]] == pytest.approx([log["loss"] for log in logs[True]], rel=1e-4)


@pytest.mark.parametrize("metrics", [True, False])
def test_rebalanced_micro_batches_take_one_batchs_step(tmp_path, tiny_model_dir, metrics):
    """The tiny SFT recipe has transformers' `batch_rebalance` sampler split each step's rows into two micro-batches
    by length: the step's loss and gradient must stay one batch's (each micro-batch's summed loss divided by the
    whole step's label tokens), whichever loss the stage computes."""
    rows = [{"name": "arithmetic", "split": "train", "rows": 8, "levels": [1, 2, 3]}]  # one step, lengths differ
    logs = {}
    for name, keys in {"one": {"per_device_train_batch_size": 8},
                       "split": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                                 "train_sampling_strategy": "batch_rebalance"}}.items():
        argv = _argv(tmp_path, f"{name}{metrics}", model_name_or_path=str(tiny_model_dir), datasets=rows, max_steps=1,
                     token_metrics=metrics, **keys)
        run = sft.build("sft", *_parse(sft, argv))
        run.trainer.train()
        logs[name] = next(log for log in run.trainer.state.log_history if "loss" in log)
        run.out.abandon()
    assert logs["split"]["loss"] == pytest.approx(logs["one"]["loss"], rel=1e-4)
    assert logs["split"]["grad_norm"] == pytest.approx(logs["one"]["grad_norm"], rel=1e-3)


def test_bf16_auto_is_this_machines_choice_and_bf16_trains_on_cpu(tmp_path, tiny_model_dir):
    from common.hardware import attention_kernel, bf16_pays

    _, training, model_args = _parse(sft, _argv(tmp_path, "auto", bf16="auto", attn_implementation="auto"))
    assert training.bf16 is bf16_pays()
    assert model_args.attn_implementation == attention_kernel()  # its rule: tests/test_config.py
    _, training, _ = _parse(sft, _argv(tmp_path, "cli") + ["--bf16", "auto"])
    assert training.bf16 is bf16_pays()
    losses = {}
    for bf16 in (False, True):  # autocast on CPU (emulated, and slow, where the CPU has no bf16 units)
        argv = _argv(tmp_path, f"bf{bf16}", model_name_or_path=str(tiny_model_dir), bf16=bf16,
                     attn_implementation="auto")
        run = sft.build("sft", *_parse(sft, argv))
        assert run.trainer.model.config._attn_implementation == attention_kernel()
        run.trainer.train()
        losses[bf16] = [log["loss"] for log in run.trainer.state.log_history if "loss" in log]
        run.out.abandon()
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], rel=2e-2)


# --------------------------------------------------------------------------------------- output discipline


def test_bad_data_fails_with_file_row_field_and_writes_nothing(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    argv = _argv(tmp_path, "out", model_name_or_path=str(tiny_model_dir),
                 datasets=[{"name": "messages", "path": str(bad)}])
    with pytest.raises(UserError, match=rf"{bad}: row 2: field 'messages\[0\]\.role'"):
        sft.main(argv)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_sft_fails_when_a_mode_loses_every_row(tmp_path, tiny_model_dir):
    rows = tmp_path / "rows.jsonl"
    with rows.open("w") as fh:
        for i in range(4):  # short /no_think answers, /think answers with a long trace
            for mode, reasoning in (("no_think", None), ("think", "step " * 400)):
                reply = {"role": "assistant", "content": str(i), "reasoning_content": reasoning}
                fh.write(json.dumps({"messages": [{"role": "user", "content": f"{i}?"}, reply], "mode": mode}) + "\n")
    argv = _argv(tmp_path, "out", model_name_or_path=str(tiny_model_dir), max_length=300,
                 datasets=[{"name": "messages", "path": str(rows)}])
    with pytest.raises(UserError, match=r"no think rows left"):
        sft.main(argv)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        raise KeyboardInterrupt


def test_complete_output_is_refused_and_survives_an_interrupted_overwrite(tmp_path, tiny_model_dir):
    argv = _argv(tmp_path, "out", model_name_or_path=str(tiny_model_dir), max_steps=1)
    sft.main(argv)
    out = tmp_path / "out"
    before = _digest(out)
    with pytest.raises(UserError, match="already holds a complete output.*overwrite_output_dir"):
        sft.main(argv)
    run = sft.build("sft", *_parse(sft, argv + ["--overwrite_output_dir", "true", "--learning_rate", "0.1"]))
    run.trainer.add_callback(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert _digest(out) == before and (out / outputs.RUN_RECORD).is_file()  # the complete output is untouched
    assert (tmp_path / "out.partial").is_dir()
    sft.main(argv + ["--overwrite_output_dir", "true", "--learning_rate", "0.1"])  # a re-run replaces it
    assert _digest(out) != before and not (tmp_path / "out.partial").exists()
    assert json.loads((out / outputs.RUN_RECORD).read_text())["learning_rate"] == 0.1


# ------------------------------------------------------------------------------------- checkpoints and DPO


def test_sft_checkpoint_loads_and_records_the_run(sft_checkpoint):
    files = {p.name for p in sft_checkpoint.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    model = AutoModelForCausalLM.from_pretrained(sft_checkpoint, use_safetensors=True)
    assert model.config.eos_token_id == model.generation_config.eos_token_id
    record = json.loads((sft_checkpoint / outputs.RUN_RECORD).read_text())
    assert record["stage"] == "sft" and record["learning_rate"] == 2e-3 and record["global_step"] == 2
    assert record["data"]["rows_per_mode"] == {"think": 8, "no_think": 8}
    assert record["data"]["dropped_per_mode"] == {"think": 0, "no_think": 0}
    assert record["recipe"]["SFTConfig"]["assistant_only_loss"] is True and record["wall_s"] > 0
    assert record["recipe"]["SFTConfig"]["output_dir"] == str(sft_checkpoint)
    history = json.loads((sft_checkpoint / stage.LOG_HISTORY).read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2]


def test_default_instructions_are_kept_from_the_checkpoint_unless_the_recipe_sets_them(tiny_model_dir, sft_checkpoint):
    """The tiny tokenizer's template carries short default instructions (set when it was trained); a stage keeps
    them, and a recipe's `default_instructions` replaces them in the saved template."""
    from transformers import AutoTokenizer
    from trl import ModelConfig

    start = AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    assert "Answer directly." in start and AutoTokenizer.from_pretrained(sft_checkpoint).chat_template == start
    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir))
    tokenizer, _ = stage.load_tokenizer(model_args, default_instructions={"no_think": "Reply at once."})
    user = [{"role": "user", "content": "hi"}]
    assert "Instructions\n\nReply at once.\n\n<|im_end|>" in tokenizer.apply_chat_template(
        user, tokenize=False, enable_thinking=False)
    assert "Answer directly." not in tokenizer.chat_template


def test_dpo_learning_rate_is_a_tenth_of_the_sft_run(tmp_path, sft_checkpoint):
    pairs = [{"name": "arithmetic", "split": "train", "rows": 8, "levels": [1]}]
    dpo.main(_argv(tmp_path, "dpo", model_name_or_path=str(sft_checkpoint), datasets=pairs, loss_type="apo_zero"))
    record = json.loads((tmp_path / "dpo" / outputs.RUN_RECORD).read_text())
    assert record["learning_rate"] == pytest.approx(2e-4)  # 0.1 x the SFT run's 2e-3
    assert record["learning_rate_origin"] == f"0.1 x 0.002 from SFT run {sft_checkpoint}/{outputs.RUN_RECORD}"
    assert record["recipe"]["DPOConfig"]["loss_type"] == ["apo_zero"]
    assert record["data"]["rows_per_mode"] == {"think": 4, "no_think": 4}
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo", use_safetensors=True)
    start = AutoModelForCausalLM.from_pretrained(sft_checkpoint, use_safetensors=True)
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), start.parameters()))


def test_dpo_learning_rate_from_an_sft_recipe_or_a_clear_error(tmp_path, tiny_model_dir):
    pairs = [{"name": "arithmetic", "split": "train", "rows": 8, "levels": [1]}]
    argv = _argv(tmp_path, "dpo", model_name_or_path=str(tiny_model_dir), datasets=pairs)
    with pytest.raises(UserError, match=r"'learning_rate' is not set.*posttrain_run\.json not found.*sft_recipe"):
        dpo.build(*_parse(dpo, argv))
    assert not (tmp_path / "dpo").exists() and not (tmp_path / "dpo.partial").exists()
    (tmp_path / "mid").mkdir()  # a record of another stage does not count as the SFT run
    (tmp_path / "mid" / outputs.RUN_RECORD).write_text(json.dumps({"stage": "midtrain", "learning_rate": 2e-3}))
    script, training, model_args = _parse(dpo, argv + ["--model_name_or_path", str(tmp_path / "mid")])
    with pytest.raises(UserError, match=r"is a 'midtrain' run, not an SFT run"):
        dpo.resolve_learning_rate(script, training, model_args)
    sft_recipe = _argv(tmp_path, "sft", learning_rate=5e-3)[1]
    script, training, model_args = _parse(dpo, argv + ["--sft_recipe", sft_recipe])
    assert dpo.resolve_learning_rate(script, training, model_args) == (
        pytest.approx(5e-4), f"0.1 x 0.005 from SFT recipe {sft_recipe}")
    script, training, model_args = _parse(dpo, argv + ["--learning_rate", "1e-5"])
    assert dpo.resolve_learning_rate(script, training, model_args) == (1e-5, "recipe")


def test_lora_sft_saves_adapter_and_a_merged_model(tmp_path, tiny_model_dir):
    sft.main(_argv(tmp_path, "lora", model_name_or_path=str(tiny_model_dir), use_peft=True, lora_r=4,
                   lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], learning_rate=1e-2))
    out = tmp_path / "lora"
    adapter = json.loads((out / stage.ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert (out / stage.ADAPTER_DIR / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)  # plain model, no PEFT
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    changed = {n for (n, a), b in zip(merged.named_parameters(), base.parameters()) if not torch.equal(a, b)}
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)  # only the adapted weights moved


def test_qlora_sft_trains_4bit_base_adapters_and_saves_a_float_merged_model(tmp_path, tiny_model_dir):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra: pip install -e '.[qlora]'")
    sft.main(_argv(tmp_path, "qlora", model_name_or_path=str(tiny_model_dir), use_peft=True, load_in_4bit=True,
                   lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], learning_rate=1e-2))
    out = tmp_path / "qlora"
    assert (out / stage.ADAPTER_DIR / "adapter_model.safetensors").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)  # a plain float model
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    changed = {n for (n, a), b in zip(merged.named_parameters(), base.parameters()) if not torch.equal(a, b)}
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)


def test_lora_trains_the_embedding_rows_of_added_hybrid_tokens(tmp_path, chatml_tokenizer_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import ModelConfig

    tokenizer_dir = chatml_tokenizer_dir  # ChatML tokens, no <think>: load_tokenizer adds them
    config = LlamaConfig(vocab_size=len(AutoTokenizer.from_pretrained(tokenizer_dir)), hidden_size=16,
                         intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    sft.main(_argv(tmp_path, "lora", model_name_or_path=str(tmp_path / "m"), tokenizer_name_or_path=str(tokenizer_dir),
                   use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
                   learning_rate=1e-2, no_think_fraction=0.0,
                   default_instructions={"think": "Think first."}))  # SmolLM3's own outgrow max_length here
    model_args = ModelConfig(model_name_or_path=str(tmp_path / "m"))
    start = stage.load_model(model_args, *stage.load_tokenizer(model_args, str(tokenizer_dir)))  # mean-of-pieces init
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora", use_safetensors=True)
    new = AutoTokenizer.from_pretrained(tmp_path / "lora").convert_tokens_to_ids(["<think>", "</think>"])
    before, after = start.get_input_embeddings().weight, merged.get_input_embeddings().weight
    assert not torch.allclose(after[new], before[new])  # the added rows trained (every /think row uses them)
    assert torch.equal(after[: min(new)], before[: min(new)])  # the rest of the vocabulary did not move


def test_lora_that_would_train_new_rows_of_a_tied_head_is_refused(tmp_path, chatml_tokenizer_dir):
    """TRL's fused LM head reads `lm_head.weight`/`.bias` itself: with tied embeddings (SmolLM2, SmolLM3) PEFT
    wraps the head for the new rows and the first step would fail; the stage says so before training."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from common.errors import UserError

    config = LlamaConfig(vocab_size=len(AutoTokenizer.from_pretrained(chatml_tokenizer_dir)), hidden_size=16,
                         intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match=r"recipe key 'use_peft'.*tied embeddings"):
        sft.main(_argv(tmp_path, "lora", model_name_or_path=str(tmp_path / "m"),
                       tokenizer_name_or_path=str(chatml_tokenizer_dir), use_peft=True, lora_r=4,
                       default_instructions={"think": "Think first."}))
    assert not (tmp_path / "lora").exists() and not (tmp_path / "lora.partial").exists()


def test_missing_hybrid_tokens_are_added_with_mean_of_pieces_embeddings(tmp_path, chatml_tokenizer_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import ModelConfig

    tokenizer_dir = chatml_tokenizer_dir  # ChatML tokens, no <think>
    base = AutoTokenizer.from_pretrained(tokenizer_dir)
    pieces = {t: base(t, add_special_tokens=False)["input_ids"] for t in ("<think>", "</think>")}
    assert all(len(p) > 1 for p in pieces.values())
    config = LlamaConfig(vocab_size=len(base), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    model_args = ModelConfig(model_name_or_path=str(tmp_path / "m"))
    tokenizer, new_tokens = stage.load_tokenizer(model_args, str(tokenizer_dir))
    assert new_tokens == pieces
    model = stage.load_model(model_args, tokenizer, new_tokens)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == len(base) + 2
    for token, ids in pieces.items():
        new_id = tokenizer.convert_tokens_to_ids(token)
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [new_id]
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            assert torch.allclose(emb.weight[new_id], emb.weight[ids].mean(0))
    assert "{% generation %}" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.slow
def test_sft_runs_on_two_ranks_under_accelerate_launch(tmp_path, tiny_model_dir):
    """`accelerate launch -m posttrain sft` with the shipped DDP config on two CPU (gloo) ranks. `--cpu` would pick
    accelerate's single-process launcher (one process, whatever --num_processes says), and the multi-process one
    does not pass the config's `use_cpu` on, so CPU ranks need ACCELERATE_USE_CPU (else each rank trains alone,
    world size 1)."""
    import os
    import subprocess
    import sys

    argv = _argv(tmp_path, "ddp", model_name_or_path=str(tiny_model_dir), datasets=[{**ROWS[0], "rows": 32}])
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / "ddp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
               "-m", "posttrain", "sft", *argv]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "ddp" / outputs.RUN_RECORD).read_text())
    assert record["world_size"] == 2 and record["global_step"] == 2  # 2 steps of 4 rows on each rank
    AutoModelForCausalLM.from_pretrained(tmp_path / "ddp", use_safetensors=True)
