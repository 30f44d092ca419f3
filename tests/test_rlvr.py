"""RLVR (`posttrain rlvr`) and the rollout server command (`posttrain serve`): real GRPOTrainer on the tiny random
model (the CPU path: transformers generation), real rewards (math-verify), real chat template."""

import json
import logging
import math
from pathlib import Path

import pytest
import yaml

from common.errors import UserError
from common.template import EMPTY_THINK
from posttrain import rlvr, serve

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, model_dir, **overrides) -> list[str]:
    """argv for a tiny GRPO run: 2 prompts x 2 generations per step, 8-token completions."""
    recipe = {
        "model_name_or_path": str(model_dir),
        "output_dir": str(tmp_path / "rlvr"),
        "datasets": [{"name": "arithmetic", "split": "train", "rows": 4, "levels": [1]}],  # 2 steps = one epoch: both modes
        "no_think_fraction": 0.5,
        "reward_funcs": ["accuracy", "format"],
        "reward_kwargs": {"accuracy": {"workers": 0}},  # math-verify in-process: no pool start-up in a unit test
        "num_generations": 2,
        "per_device_train_batch_size": 4,
        "max_completion_length": 8,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        **overrides,
    }
    path = tmp_path / "rlvr.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return ["--config", str(path)]


def _parse(argv):
    """What `posttrain rlvr` parses: the stage's dataclasses, CPU defaults, RLVR defaults."""
    from trl import GRPOConfig, ModelConfig

    return rlvr.stage.parse_args((rlvr.RLVRScriptArguments, GRPOConfig, ModelConfig), argv, "test", rlvr.RLVR_DEFAULTS)


def test_two_step_run_writes_loadable_checkpoint_and_per_mode_logs(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The real scoring path inside GRPOTrainer: math-verify in a worker process.
    assert rlvr.main(_recipe(tmp_path, tiny_model_dir, reward_kwargs={"accuracy": {"workers": 1}})) == 0
    out = tmp_path / "rlvr"
    assert out.is_dir() and not (tmp_path / "rlvr.partial").exists()
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out))
    history = json.loads((out / "log_history.json").read_text())
    steps = [h for h in history if "completions/mean_length" in h]
    assert len(steps) == 2
    record = json.loads((out / "posttrain_run.json").read_text())
    assert record["stage"] == "rlvr" and record["global_step"] == 2
    for mode in ("think", "no_think"):
        lengths = [h[f"completions/{mode}/mean_length"] for h in steps if f"completions/{mode}/mean_length" in h]
        assert lengths, f"no {mode} length logged"
        assert all(1 <= x <= 8 for x in lengths)  # tokens, bounded by max_completion_length
        assert any(f"rewards/accuracy/{mode}" in h for h in steps)
    for h in steps:
        # the per-mode means are means of the same completions TRL averages over both modes
        per_mode = [h[f"completions/{m}/mean_length"] for m in ("think", "no_think") if f"completions/{m}/mean_length" in h]
        assert min(per_mode) - 1e-6 <= h["completions/mean_length"] <= max(per_mode) + 1e-6
        assert all(math.isfinite(h[k]) for k in h if k.startswith("rewards/"))
        # the reward's own counts reach TRL's logs through its log_metric hook
        assert h["rewards/accuracy/timeouts"] == 0.0 and h["rewards/accuracy/unparseable_gold"] == 0.0


def test_prompts_carry_the_mode_in_the_system_message_and_no_think_ends_with_empty_think_block(tiny_model_dir, tmp_path):
    run = rlvr.build(*_parse(_recipe(tmp_path, tiny_model_dir)))
    tokenizer, dataset = run.trainer.processing_class, run.trainer.train_dataset
    assert set(dataset["mode"]) == {"think", "no_think"}
    for row in dataset:
        system, question = row["prompt"]
        assert system == {"role": "system", "content": f"/{row['mode']}"} and question["role"] == "user"
        text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert f"Reasoning Mode: /{row['mode']}\n" in text
        if row["mode"] == "no_think":
            assert text.endswith("<|im_start|>assistant\n" + EMPTY_THINK)
        else:
            assert text.endswith("<|im_start|>assistant\n")
    # validation done, nothing written: only the (empty) .partial the Trainer makes for its output_dir
    assert not (tmp_path / "rlvr").exists() and not any((tmp_path / "rlvr.partial").iterdir())


def test_reward_weights_follow_reward_funcs_and_reward_kwargs_reach_the_reward(tiny_model_dir, tmp_path):
    argv = _recipe(
        tmp_path, tiny_model_dir, reward_funcs=["accuracy", "format", "length_budget"], reward_weights=[1.0, 0.25, 0.5],
        reward_kwargs={"accuracy": {"workers": 0}, "length_budget": {"think_budget": 64, "no_think_budget": 4}},
    )
    trainer = rlvr.build(*_parse(argv)).trainer
    assert trainer.reward_func_names == ["accuracy", "format", "length_budget"]
    assert trainer.reward_weights.tolist() == [1.0, 0.25, 0.5]
    budget = trainer.reward_funcs[2]
    logged = []
    rewards = budget(
        ["\\boxed{7}", "\\boxed{7}"], completion_ids=[[1] * 3, [1] * 8], mode=["no_think", "think"],
        log_metric=lambda name, value: logged.append((name, value)),
    )
    assert rewards == [0.0, 0.0] and budget(["x"], completion_ids=[[1] * 6], mode=["no_think"]) == [-0.5]
    # only the first reward logs lengths; every reward logs its own mean per mode
    assert sorted(logged) == [("rewards/length_budget/no_think", 0.0), ("rewards/length_budget/think", 0.0)]


def test_per_mode_metrics_log_each_completion_under_its_mode():
    from rewards import get_reward

    fmt = rlvr.PerModeMetrics(get_reward("format"), lengths=True)
    logged = []
    completions = ["<think>\n1+2=3\n</think>\n\\boxed{3}", "\\boxed{3}", "<think>\n\n</think>\n\\boxed{3}"]
    rewards = fmt(completions, mode=["think", "think", "no_think"], completion_ids=[[0] * 9, [0] * 4, [0] * 7],
                  log_metric=lambda name, value: logged.append((name, value)))
    assert rewards == [1.0, 0.0, 0.0] and fmt.__name__ == "format"
    assert sorted(logged) == sorted([
        ("rewards/format/think", 1.0), ("rewards/format/think", 0.0), ("rewards/format/no_think", 0.0),
        ("completions/think/mean_length", 9.0), ("completions/think/mean_length", 4.0),
        ("completions/no_think/mean_length", 7.0),
    ])


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"reward_funcs": ["accuracy", "format"], "reward_weights": [1.0]}, "reward_weights"),
        ({"reward_funcs": ["accuracy", "correctness"]}, "reward_funcs"),
        ({"reward_kwargs": {"length_budget": {"think_budget": 8}}}, "reward_kwargs"),
        ({"reward_kwargs": {"format": {"budget": 8}}}, "reward_kwargs"),
        ({"use_vllm": True}, "use_vllm"),
        ({"num_generations": 3}, "num_generations"),
    ],
)
def test_bad_recipe_fails_with_the_key_named_before_anything_is_written(tiny_model_dir, tmp_path, overrides, key):
    with pytest.raises(UserError, match=key) as e:
        rlvr.main(_recipe(tmp_path, tiny_model_dir, **overrides))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "rlvr").exists() and not (tmp_path / "rlvr.partial").exists()


def test_rlvr_connects_to_localhost_by_default(tiny_model_dir, tmp_path):
    _, training, _ = _parse(_recipe(tmp_path, tiny_model_dir))
    assert training.vllm_server_host == "127.0.0.1"
    _, training, _ = _parse(_recipe(tmp_path, tiny_model_dir) + ["--vllm_server_host", "10.0.0.5"])
    assert training.vllm_server_host == "10.0.0.5"


def test_serve_command_binds_localhost_and_passes_model_and_parallelism(tmp_path):
    command, env = serve.server_command(["--model", str(tmp_path), "--tensor_parallel_size", "2", "--port", "8011"])
    args = command[command.index("serve") + 1 :]
    assert args[0] == str(tmp_path)
    flags = dict(zip(args[1::2], args[2::2]))
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8011" and flags["--tensor-parallel-size"] == "2"
    assert flags["--load-format"] == "safetensors" and "nccl" in flags["--weight-transfer-config"]
    assert "--trust-remote-code" not in args and env["VLLM_SERVER_DEV_MODE"] == "1"
    command, _ = serve.server_command(["--model", "m", "--host", "10.0.0.5", "--", "--max-num-seqs", "64"])
    assert command[command.index("--host") + 1] == "10.0.0.5" and command[-2:] == ["--max-num-seqs", "64"]
    with pytest.raises(UserError, match="trust_remote_code"):
        serve.server_command(["--model", "m", "--trust_remote_code", "true"])


def test_serve_without_vllm_names_the_extra(tmp_path, capsys):
    from trl.import_utils import is_vllm_available

    if is_vllm_available():
        pytest.skip("vllm is installed: `posttrain serve` would start a server")
    from posttrain.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'posttrain[vllm]'" in err


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo", "dapo", "ppo"])
def test_loss_type_is_checked_before_anything_is_loaded(tiny_model_dir, tmp_path, loss_type):
    argv = ["--config", str(ROOT / "recipes" / "tiny" / "rlvr.yaml"), "--loss_type", loss_type]
    script, training, _ = _parse(argv)
    if loss_type != "ppo":
        rlvr.check_rollouts(training, script)
        assert training.loss_type == loss_type
        return
    # GRPOConfig takes any string; TRL's trainer would raise only at its first step, after model and rollouts
    with pytest.raises(UserError, match="recipe key 'loss_type': must be one of dapo, grpo") as e:
        rlvr.main(_recipe(tmp_path, tiny_model_dir, loss_type=loss_type))
    assert "\n" not in str(e.value) and not (tmp_path / "rlvr").exists() and not (tmp_path / "rlvr.partial").exists()


def test_loss_types_are_those_trl_documents_and_an_unknown_one_passes_grpo_config():
    import re

    from trl import GRPOConfig

    help_text = GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    documented = re.search(r"Supported values are (.*?)\. ", help_text).group(1)
    assert set(rlvr.LOSS_TYPES) == set(re.findall(r"'(\w+)'", documented))
    # why the list is ours: TRL 1.16 accepts an unknown loss type at config time
    assert GRPOConfig(output_dir="unused", loss_type="ppo", use_cpu=True, bf16=False).loss_type == "ppo"


def test_a_soft_overlong_limit_other_than_max_completion_length_warns(tiny_model_dir, tmp_path, caplog):
    def check(max_length):
        argv = _recipe(
            tmp_path, tiny_model_dir, reward_funcs=["accuracy", "soft_overlong"], max_completion_length=8,
            reward_kwargs={"accuracy": {"workers": 0}, "soft_overlong": {"max_length": max_length, "cache_length": 2}},
        )
        script, training, _ = _parse(argv)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="posttrain"):
            rlvr.check_rollouts(training, script)
        return caplog.text

    assert "soft_overlong max_length 16 differs from max_completion_length 8" in check(16)
    assert "soft_overlong" not in check(8)


@pytest.mark.parametrize("name", ["tiny", "smollm3"])
def test_recipes_parse(name):
    # use_cpu: TrainingArguments refuses the GPU recipe's bf16 on a machine without CUDA otherwise
    script, training, _ = _parse(["--config", str(ROOT / "recipes" / name / "rlvr.yaml"), "--use_cpu", "true"])
    rlvr.build_rewards(script, training.reward_weights)  # names, weights and params fit together
    assert training.vllm_server_host == "127.0.0.1"
    if name == "smollm3":
        assert training.use_vllm and training.vllm_mode == "colocate" and training.bf16
        assert training.loss_type == "dapo" and training.beta == 0.0 and training.epsilon_high == 0.28
        assert 8 <= training.num_generations <= 16 and training.max_completion_length >= 4096
    else:
        assert not training.use_vllm
