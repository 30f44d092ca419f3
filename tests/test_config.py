"""Recipes: `common.recipe.parse_recipe` into TRL's real configs, the one-line errors of the CLI, and the
accelerate launch configs in recipes/accelerate/ read by accelerate's own loader."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from trl import ModelConfig, SFTConfig

from common.errors import UserError
from common.recipe import parse_recipe
from posttrain import cli

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_DIR = ROOT / "recipes" / "accelerate"


@dataclass
class ScriptArgs:
    dataset_path: str
    levels: list[int] = field(default_factory=lambda: [1, 2])
    seed_text: str | None = None


TYPES = [ScriptArgs, SFTConfig, ModelConfig]
CPU_DEFAULTS = {"bf16": False, "activation_checkpointing": False, "max_steps": 5, "report_to": "none"}


def recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def parse(argv):
    return parse_recipe(TYPES, argv, defaults=CPU_DEFAULTS)


def test_recipe_fills_every_dataclass(tmp_path):
    path = recipe(tmp_path, (
        "dataset_path: data.jsonl\n"
        "learning_rate: 1e-4\n"  # YAML reads this as a string: converted to float
        "max_length: 256\n"
        "max_steps: 7\n"  # beats the defaults
        "model_name_or_path: tiny\n"
        "lora_target_modules: [q_proj, v_proj]\n"
        "model_init_kwargs: {dtype: float32}\n"
        f"output_dir: {tmp_path / 'out'}\n"
    ))
    script, sft, model = parse(["--config", path])
    assert script.dataset_path == "data.jsonl" and script.levels == [1, 2]
    assert sft.learning_rate == 1e-4 and isinstance(sft.learning_rate, float)
    assert sft.max_length == 256 and sft.max_steps == 7 and sft.bf16 is False
    assert sft.model_init_kwargs == {"dtype": "float32"}
    assert model.model_name_or_path == "tiny" and model.lora_target_modules == ["q_proj", "v_proj"]


def test_command_line_beats_recipe(tmp_path):
    path = recipe(tmp_path, "dataset_path: a.jsonl\nlearning_rate: 1e-4\nmax_length: 256\n")
    script, sft, _ = parse(["--config", path, "--learning_rate", "3e-3", "--max_length=64", "--packing",
                            "--dataset-path", "b.jsonl"])
    assert sft.learning_rate == 3e-3 and sft.max_length == 64 and sft.packing is True
    assert script.dataset_path == "b.jsonl"  # dashes read as underscores


def test_auto_precision_is_resolved_for_this_machine_before_type_checks():
    from common.hardware import bf16_pays
    from pretrain.data import DataConfig
    from pretrain.train import TrainConfig

    path = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "pretrain.yaml")  # mixed_precision: auto
    _, train = parse_recipe([DataConfig, TrainConfig], ["--config", path])
    assert train.mixed_precision == ("bf16" if bf16_pays() else "no")
    assert train.attn_implementation == ("eager" if bf16_pays() and not torch.cuda.is_available() else "sdpa")
    _, train = parse_recipe([DataConfig, TrainConfig], ["--config", path, "--mixed_precision", "fp16"])
    assert train.mixed_precision == "fp16"
    with pytest.raises(UserError, match="'mixed_precision' must be"):
        parse_recipe([DataConfig, TrainConfig], ["--config", path, "--mixed_precision", "fastest"])


@pytest.mark.parametrize(
    "argv, key, expected",
    [
        (["--lora_target_modules", "q_proj,v_proj"], "lora_target_modules", ["q_proj", "v_proj"]),
        (["--lora_target_modules", "[q_proj, v_proj]"], "lora_target_modules", ["q_proj", "v_proj"]),
        # one item, as TRL's own parser reads it: ModelConfig turns a one-item list into the string
        (["--lora_target_modules", "all-linear"], "lora_target_modules", "all-linear"),
        (["--levels", "3"], "levels", [3]),
        (["--levels=[3, 4]"], "levels", [3, 4]),
        (["--model_init_kwargs", '{"dtype": "bfloat16"}'], "model_init_kwargs", {"dtype": "bfloat16"}),
        (["--max_length", "null"], "max_length", None),
    ],
)
def test_list_dict_and_null_values_from_the_command_line(argv, key, expected):
    parsed = parse(["--dataset_path", "d.jsonl", *argv])
    assert next(getattr(obj, key) for obj in parsed if hasattr(obj, key)) == expected


@pytest.mark.parametrize(
    "text, argv, message",
    [
        ("learnig_rate: 1e-3\n", [], "recipe.yaml: unknown recipe key 'learnig_rate' (did you mean 'learning_rate'?)"),
        ("", ["--max_lenght", "5"], "command line: unknown recipe key 'max_lenght' (did you mean 'max_length'?)"),
        ("max_length: long\n", [], "recipe.yaml: recipe key 'max_length' must be int | None, got 'long'"),
        ("levels: [1, two]\n", [], "recipe key 'levels' must be list[int], got"),
        ("packing: 3\n", [], "recipe key 'packing' must be bool, got 3"),
        ("", ["--learning_rate", "fast"], "command line: recipe key 'learning_rate' must be float, got 'fast'"),
        ("lr_scheduler_type: cosinee\n", [], "recipe.yaml: cosinee is not a valid SchedulerType"),  # TRL's own check
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, text, argv, message):
    path = recipe(tmp_path, "dataset_path: d.jsonl\n" + text)
    with pytest.raises(UserError) as error:
        parse(["--config", path, *argv])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_required_key_is_named(tmp_path):
    with pytest.raises(UserError, match=r"recipe.yaml: missing required recipe key 'dataset_path'"):
        parse(["--config", recipe(tmp_path, "max_length: 8\n")])


@pytest.mark.parametrize(
    "text, message",
    [(None, "recipe file not found"), ("a: [1,\n", "not valid YAML"), ("- a\n- b\n", "must be a mapping")],
)
def test_unreadable_recipe_names_the_path(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as error:
        parse(["--config", str(path)])
    assert str(error.value).startswith(f"{path}:") and message in str(error.value)  # YAML errors add :line:col


def test_bad_recipe_exits_with_one_line_error_and_no_traceback(tmp_path):
    """The console script, as a user runs it: `error: ...` on stderr, exit 2; --debug shows the traceback."""
    path = recipe(tmp_path, "pth: templates/smollm3_hybrid.jinja\n")
    script = Path(sys.executable).with_name("posttrain")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "posttrain"]
    run = subprocess.run([*command, "check-template", "--config", path], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr == f"error: {path}: unknown recipe key 'pth' (did you mean 'path'?)\n"
    with pytest.raises(UserError):
        cli.main(["check-template", "--config", path, "--debug"])


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sftt"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: unknown command 'sftt' (commands: midtrain, sft, pairs, route, dpo,")


# --- recipes/accelerate/*.yaml ------------------------------------------------------------------------------

ACCELERATE_CONFIGS = {"ddp": "MULTI_GPU", "fsdp2": "FSDP", "zero3": "DEEPSPEED", "multi_node": "MULTI_GPU"}


def launch_args(name: str, *extra: str):
    """The arguments `accelerate launch --config_file <file>` ends up with: its parser, then the private step
    that merges the config file in (pinned by accelerate>=1.15; nothing is launched)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(ACCELERATE_DIR / f"{name}.yaml"), *extra, "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    return parser, args, defaults


def test_accelerate_configs_are_the_four_shipped():
    assert sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml")) == sorted(ACCELERATE_CONFIGS)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_config_loads_with_accelerate(name):
    """accelerate's loader refuses unknown top-level keys; nested keys (fsdp_config, deepspeed_config) are copied
    onto launch arguments by name and silently ignored when misspelled, so each must be a launch argument."""
    parser, args, config = launch_args(name)
    assert config.distributed_type.value == ACCELERATE_CONFIGS[name]
    assert config.mixed_precision == "bf16" and args.mixed_precision == "bf16"
    launch_options = {action.dest for action in parser._actions}
    for section in ("fsdp_config", "deepspeed_config", "dynamo_config"):
        for key in getattr(config, section):
            assert key in launch_options, f"{name}.yaml: {section}.{key} is not an `accelerate launch` option"


def test_fsdp2_config_builds_the_plugin_accelerate_would():
    """The environment `accelerate launch` hands the workers, turned into the FSDP plugin they would build."""
    import os
    from unittest import mock

    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers.models.smollm3 import modeling_smollm3

    _, args, _ = launch_args("fsdp2")
    assert args.use_fsdp and args.num_processes == 8
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FSDP2's FULL_SHARD
    assert plugin.transformer_cls_names_to_wrap == ["SmolLM3DecoderLayer"]
    assert hasattr(modeling_smollm3, "SmolLM3DecoderLayer")  # the name resolves in this transformers
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)  # save_pretrained writes a loadable checkpoint


def test_zero3_config_reaches_deepspeed_environment():
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    _, args, config = launch_args("zero3")
    assert args.use_deepspeed and config.deepspeed_config["zero_stage"] == 3
    args.deepspeed_fields_from_accelerate_config = ",".join(config.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


def test_multi_node_config_gives_torchrun_two_nodes():
    from accelerate.utils.launch import prepare_multi_gpu_env

    # the second machine's launch (rank 1 also skips the check that the port is free on this machine)
    _, args, _ = launch_args("multi_node", "--machine_rank", "1")
    prepare_multi_gpu_env(args)  # sets the torchrun arguments on `args`
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert args.rdzv_endpoint == "192.0.2.1:29500"  # main_process_ip:main_process_port
