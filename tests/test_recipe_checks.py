"""Recipe checks made before anything is read or written: YAML errors with line and column, duplicate keys,
command-line values typed by their field, and every numeric key against its range (posttrain stages and
pretrain), each a one-line error."""

import subprocess
import sys
from pathlib import Path

import pytest
from trl import DPOConfig, GRPOConfig, ModelConfig, SFTConfig

from common.errors import UserError
from common.recipe import parse_recipe
from posttrain.sft import SFTScriptArguments
from pretrain.data import DataConfig
from pretrain.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CPU = {"bf16": False, "activation_checkpointing": False}


def sft(argv, text: str | None = None, tmp_path: Path | None = None, config=SFTConfig):
    if text is not None:
        path = tmp_path / "recipe.yaml"
        path.write_text(text)
        argv = ["--config", str(path), *argv]
    return parse_recipe([SFTScriptArguments, config, ModelConfig], [*argv, "--output_dir", "out"], defaults=CPU)


def error_of(*args, **kwargs) -> str:
    with pytest.raises(UserError) as error:
        sft(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate: 1e-4\ndatasets: [1,\n", "recipe.yaml:3:1: not valid YAML (expected the node content"),
        ("learning_rate: 1e-4\n\tmax_steps: 2\n", "recipe.yaml:2:1: not valid YAML (found character '\\t'"),
        ("learning_rate: 1e-4\nmax_steps: 2\nlearning_rate: 3e-4\n", "recipe.yaml:3:1: duplicate key 'learning_rate'"),
        ("datasets:\n  - {name: arithmetic, rows: 5, rows: 6}\n", "recipe.yaml:2:33: duplicate key 'rows'"),
    ],
)
def test_yaml_errors_name_file_line_and_column(tmp_path, text, message):
    error = error_of([], text, tmp_path)
    assert error.startswith(f"{tmp_path / 'recipe.yaml'}:") and message in error


def test_command_line_values_are_typed_by_their_field():
    """`--save_strategy no` is the value transformers documents; YAML 1.1 read it as False."""
    _, training, model = sft(["--save_strategy", "no", "--hub_model_id", "010", "--packing", "false",
                              "--lora_target_modules", "on", "off"])
    assert training.save_strategy == "no" and training.hub_model_id == "010" and training.packing is False
    assert model.lora_target_modules == ["on", "off"]
    assert sft(["--max_length", "null"])[1].max_length is None
    assert error_of(["--packing", "yes"]) == "command line: recipe key 'packing' must be bool, got 'yes'"


def test_a_yaml_boolean_for_a_text_key_says_to_quote_it(tmp_path):
    assert error_of([], "save_strategy: no\n", tmp_path).endswith(
        "recipe key 'save_strategy' must be transformers.trainer_utils.SaveStrategy | str, got False "
        '(quote it to pass text, e.g. "no")'
    )
    assert sft([], 'save_strategy: "no"\n', tmp_path)[1].save_strategy == "no"


@pytest.mark.parametrize(
    "argv, config, message",
    [
        (["--learning_rate", "-1e-4"], SFTConfig, "'learning_rate' must be > 0, got -0.0001"),
        (["--learning_rate", ".nan"], SFTConfig, "'learning_rate' must be > 0, got nan"),
        (["--max_steps", "0"], SFTConfig, "'max_steps' must be >= 1 or -1 (train num_train_epochs), got 0"),
        (["--max_steps", "-5"], SFTConfig, "'max_steps' must be >= 1 or -1 (train num_train_epochs), got -5"),
        (["--num_train_epochs", "0"], SFTConfig, "'num_train_epochs' must be > 0, got 0"),
        (["--per_device_train_batch_size", "0"], SFTConfig, "'per_device_train_batch_size' must be >= 1, got 0"),
        (["--gradient_accumulation_steps", "0"], SFTConfig, "'gradient_accumulation_steps' must be >= 1, got 0"),
        (["--warmup_steps", "-0.1"], SFTConfig, "'warmup_steps' must be >= 0, got -0.1"),
        (["--no_think_fraction", "1.5"], SFTConfig, "'no_think_fraction' must be in [0, 1], got 1.5"),
        (["--max_length", "0"], SFTConfig, "'max_length' must be >= 1, got 0"),
        (["--lora_dropout", "1"], SFTConfig, "'lora_dropout' must be in [0, 1), got 1"),
        (["--num_generations", "1"], GRPOConfig, "'num_generations' must be >= 2, got 1"),
    ],
)
def test_out_of_range_values_name_key_value_and_range(argv, config, message):
    assert error_of(argv, config=config) == f"command line: recipe key {message}"


def pretrain_error(tmp_path, *argv) -> str:
    with pytest.raises(UserError) as error:
        parse_recipe([DataConfig, TrainConfig], ["--config", str(ROOT / "recipes/tiny/pretrain.yaml"),
                                                 "--output_dir", str(tmp_path / "run"), *argv])
    return str(error.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning_rate", "-0.1"], "'learning_rate' must be > 0, got -0.1"),
        (["--max_steps", "-5"], "'max_steps' must be >= 0, got -5"),
        (["--micro_batch_size", "0"], "'micro_batch_size' must be >= 1, got 0"),
        (["--decay_fraction", "1"], "'decay_fraction' must be in [0, 1), got 1"),
        (["--save_steps", "-10"], "'save_steps' must be >= 0, got -10"),
        (["--seq_len", "1"], "'seq_len' must be >= 2, got 1"),
    ],
)
def test_pretrain_uses_the_same_table(tmp_path, argv, message):
    assert pretrain_error(tmp_path, *argv) == f"command line: recipe key {message}"


def test_special_values_and_per_command_meanings():
    """max_steps -1 trains by epochs; GRPO's beta 0 drops the KL term while DPO divides by beta; pretrain's
    max_steps 0 derives the steps from the token budgets."""
    assert sft(["--max_steps", "-1"])[1].max_steps == -1
    assert sft(["--beta", "0"], config=GRPOConfig)[1].beta == 0
    assert error_of(["--beta", "0"], config=DPOConfig) == "command line: recipe key 'beta' must be > 0, got 0"
    _, cfg = parse_recipe([DataConfig, TrainConfig], ["--config", str(ROOT / "recipes/tiny/pretrain.yaml"),
                                                      "--max_steps", "0"])
    assert cfg.max_steps == 0


def test_negative_learning_rate_stops_the_command_before_anything_is_written(tmp_path):
    """It used to fail in the optimizer, after the data was loaded, leaving an empty `.partial/`."""
    out = tmp_path / "sft"
    run = subprocess.run(
        [sys.executable, "-m", "posttrain", "sft", "--config", str(ROOT / "recipes/tiny/sft.yaml"),
         "--model_name_or_path", str(tmp_path / "no-model"), "--output_dir", str(out), "--learning_rate", "-1e-4"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert run.returncode == 2
    assert run.stderr == "error: command line: recipe key 'learning_rate' must be > 0, got -0.0001\n"
    assert not out.exists() and not out.with_name("sft.partial").exists()


@pytest.mark.parametrize("offline", ["0", "1"])
def test_bitsandbytes_asks_no_one_to_trust_remote_code(offline, monkeypatch):
    """bitsandbytes (the qlora extra, installed here) logged "Failed to load CPU gemm_4bit_forward ... Set
    trust_remote_code=True" (online) or "Skipping publisher trust check for 'kernels-community/..." (offline) when
    imported, i.e. on every command that loads transformers."""
    pytest.importorskip("bitsandbytes")
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    run = subprocess.run([sys.executable, "-m", "posttrain", "sft", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0 and "usage: posttrain sft" in run.stdout
    assert "gemm_4bit_forward" not in run.stderr and "kernels-community" not in run.stderr
