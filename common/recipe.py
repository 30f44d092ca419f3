"""Recipes: one flat YAML file per stage, in the TRL CLI convention (`--config recipe.yaml` plus `--key value`
overrides), parsed into the stage's dataclasses (the project's script arguments, TRL's `ModelConfig` and the
trainer's config).

Why not `TrlParser` alone (TRL 1.16, measured): it does refuse unknown keys, but it copies YAML values into
argparse defaults unchecked (`save_strategy: no` arrives as False and fails inside transformers), keeps the last
of two duplicate keys, and checks no ranges (`max_steps: -5` and `learning_rate: -1` parse). Here every key must
name a field of one of the dataclasses, every value must fit the field's type (a command-line value is typed by
its field: `--save_strategy no` stays text) and every numeric value its range in `RANGES`; the error names the
key and the file (YAML errors and duplicate keys: its line and column). All of it runs before a command reads
data or writes anything. The dataclasses are then built by `HfArgumentParser.parse_dict`, so TRL's own
`__post_init__` checks still run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

import yaml
from transformers import HfArgumentParser

from common.errors import UserError
from common.hardware import AUTO


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word: a recipe that sets `learning_rate` twice would
    train with whichever came last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file, bad YAML (with its line and column), a duplicate key or a non-mapping
    names the path."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(e.problem or e.context).split())
        if isinstance(e, _DuplicateKey):
            raise UserError(f"{where}: {problem}") from None
        raise UserError(f"{where}: not valid YAML ({problem})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def _split_argv(argv: Sequence[str]) -> tuple[str | None, dict[str, list[str] | None]]:
    """`--config PATH` and `--key value` / `--key=value` pairs: each key's words as given (None for a bare flag),
    typed later by the field they set (`_from_command_line`)."""
    config, overrides, i = None, {}, 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r} (options are --key value)")
        key, eq, value = arg[2:].partition("=")
        values = [value] if eq else []
        while not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            values.append(argv[i + 1])  # `--models a b` gives a list, as argparse's nargs="+"
            i += 1
        i += 1
        key = key.replace("-", "_")
        if key == "config":
            config = values[0] if values else None
            continue
        overrides[key] = values or None
    return config, overrides


def _scalar(value: str):
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _arms(tp) -> tuple:
    """The alternatives of a union annotation (the annotation itself otherwise)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _takes_text(tp, text: str) -> bool:
    """Would the field take `text` as it is: a str field, a Literal or Enum with that value?"""
    for arm in _arms(tp):
        if arm is str or (typing.get_origin(arm) is typing.Literal and text in typing.get_args(arm)):
            return True
        if isinstance(arm, type) and issubclass(arm, Enum) and text in {m.value for m in arm}:
            return True
    return False


def _from_command_line(words: list[str] | None, tp):
    """A command-line value typed by the field it sets. YAML 1.1 reads `no`, `off`, `yes`, `on` as booleans and
    `010` as 8: a field that takes text keeps the text (`--save_strategy no`), a bool field takes true/false, and
    numbers, lists, dicts and null are read as YAML."""
    if words is None:
        return True  # a bare flag
    lists = [arm for arm in _arms(tp) if typing.get_origin(arm) in (list, Sequence) and typing.get_args(arm)]
    item = typing.get_args(lists[0])[0] if lists else None  # the item type of a list field
    if len(words) > 1:  # `--models a b`
        return [_from_command_line([w], item or Any) for w in words]
    text = words[0]
    value = _scalar(text)
    if item is not None and not isinstance(value, (list, dict, type(None))):
        tp = item  # one item of a list field
    if value is None:
        return None
    others = [arm for arm in _arms(tp) if arm not in (str, type(None))]
    if _takes_text(tp, text) and not any(_fits(value, arm)[0] for arm in others):
        return text  # `--save_strategy no`, `--host ::`
    if isinstance(value, bool) and text.lower() not in ("true", "false"):
        return text  # a bool field takes true/false: `must be bool, got 'yes'`
    return value


def _type_name(tp) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")  # list[int] (a generic's __name__ would say just "list")


def _fits(value, tp) -> tuple[bool, Any]:
    """Does `value` fit the annotation `tp`? Returns (ok, value converted where YAML is loose: int -> float)."""
    if tp is Any or tp is typing.Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            ok, conv = _fits(value, arm)
            if ok:
                return True, conv
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str) and "," in value:  # `--lora_target_modules q_proj,v_proj`
            value = [v.strip() for v in value.split(",")]
        elif isinstance(value, (str, int, float)):  # one item, as argparse's nargs="+" reads `--key v`
            value = [value]
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        if args and args[0] is not Ellipsis:
            conv = []
            for v in value:
                ok, c = _fits(v, args[0])
                if not ok:
                    return False, value
                conv.append(c)
            value = conv
        return True, list(value)
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return True, tp(value).value
        except ValueError:
            return False, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool), str(value)
    return True, value  # other annotations (callables, classes): left to the dataclass


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric recipe key allows: from `low` to `high` (None: unbounded), either end excluded when
    `*_open`, plus `special` (value, meaning) pairs (max_steps -1: train by epochs)."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    special: tuple = ()

    def __contains__(self, value) -> bool:
        if value in [v for v, _ in self.special]:
            return True
        if math.isnan(value):  # (YAML's .nan) compares false with every bound
            return False
        below = value < self.low or (self.low_open and value == self.low)
        above = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        return not (below or above)

    def __str__(self) -> str:
        if self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        else:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        return " or ".join([text, *(f"{v} ({meaning})" for v, meaning in self.special)])


POSITIVE, NON_NEGATIVE, AT_LEAST_1 = Range(0, low_open=True), Range(0), Range(1)
SHARE, SHARE_BELOW_1 = Range(0, 1), Range(0, 1, high_open=True)

# Every numeric recipe key with a range, checked by `parse_recipe` before anything is read or written (a negative
# learning rate used to fail in the optimizer, after the data was loaded; max_steps 0 trained anyway). The keys of
# all commands (posttrain stages, eval, pipeline, serve, pretrain) share the table; a `Class.key` entry holds
# where one class's key means something else.
RANGES: dict[str, Range] = {
    "learning_rate": POSITIVE,
    "max_steps": Range(1, special=((-1, "train num_train_epochs"),)),
    "TrainConfig.max_steps": NON_NEGATIVE,  # pretrain: 0 = the stages' token budgets / the global batch
    "num_train_epochs": POSITIVE,
    "per_device_train_batch_size": AT_LEAST_1,
    "per_device_eval_batch_size": AT_LEAST_1,
    "micro_batch_size": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1,
    "global_batch_tokens": AT_LEAST_1,
    "warmup_steps": NON_NEGATIVE,  # transformers: below 1 a share of the steps
    "logging_steps": POSITIVE,  # transformers: below 1 a share of the steps
    "TrainConfig.logging_steps": AT_LEAST_1,
    "save_steps": POSITIVE,
    "TrainConfig.save_steps": NON_NEGATIVE,  # pretrain: 0 never saves
    "eval_steps": POSITIVE,
    "keep_last": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,
    "adam_beta1": SHARE_BELOW_1,
    "adam_beta2": SHARE_BELOW_1,
    "adam_epsilon": NON_NEGATIVE,
    "decay_fraction": SHARE_BELOW_1,
    "min_lr_ratio": SHARE,
    "seed": NON_NEGATIVE,
    "seq_len": Range(2),
    "torch_threads": NON_NEGATIVE,
    "peak_tflops": POSITIVE,
    "no_think_fraction": SHARE,
    "sft_learning_rate_ratio": POSITIVE,
    "max_length": AT_LEAST_1,
    "max_prompt_length": AT_LEAST_1,
    "max_completion_length": AT_LEAST_1,
    "beta": NON_NEGATIVE,  # GRPO: the KL coefficient, 0 = no reference model
    "DPOConfig.beta": POSITIVE,  # DPO: the loss divides by it
    "num_generations": Range(2),  # GRPO's advantages compare completions of one prompt
    "num_iterations": AT_LEAST_1,
    "epsilon": POSITIVE,
    "temperature": POSITIVE,
    "EvalArguments.temperature": NON_NEGATIVE,  # 0 = greedy
    "EvalArguments.num_generations": AT_LEAST_1,
    "PairsArguments.temperature": NON_NEGATIVE,
    "top_p": Range(0, 1, low_open=True),
    "lora_r": AT_LEAST_1,
    "lora_alpha": POSITIVE,
    "lora_dropout": SHARE_BELOW_1,
    "max_new_tokens": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "num_samples": NON_NEGATIVE,
    "leak_tokens": AT_LEAST_1,
    "parallel": AT_LEAST_1,
    "eval_max_new_tokens": AT_LEAST_1,
    "eval_batch_size": AT_LEAST_1,
    "tensor_parallel_size": AT_LEAST_1,
    "data_parallel_size": AT_LEAST_1,
    "port": Range(1, 65535),
}


def check_range(dc: type, key: str, value, origin: str) -> None:
    """One line naming the key, the value and the allowed range; None (unset) and non-numbers pass."""
    allowed = RANGES.get(f"{dc.__name__}.{key}", RANGES.get(key))
    if allowed is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if value not in allowed:
        raise UserError(f"{origin}: recipe key {key!r} must be {allowed}, got {value!r}")


def parse_recipe(dataclass_types: Sequence[type], argv: Sequence[str], defaults: dict | None = None):
    """Parse `--config recipe.yaml --key value ...` into one instance per dataclass type.

    `defaults` sit under the recipe (e.g. CPU-safe settings); recipe keys override them and CLI keys
    override the recipe. Returns the instances in the order of `dataclass_types`.
    """
    config_path, overrides = _split_argv(argv)
    recipe = load_yaml(config_path) if config_path else {}
    source = config_path or "command line"
    fields = {}
    for dc in dataclass_types:
        for f in dataclasses.fields(dc):
            if f.init:
                fields.setdefault(f.name, (dc, f))
    hints = {dc: typing.get_type_hints(dc) for dc in dataclass_types}

    merged = dict(defaults or {})
    for origin, values in ((source, recipe), ("command line", overrides)):
        for key, value in values.items():
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"{origin}: unknown recipe key {key!r}{hint}")
            dc, f = fields[key]
            tp = hints[dc][key]
            if key in AUTO and value in ("auto", ["auto"]):  # the recipe's or the command line's `auto`
                value = AUTO[key]()
            elif values is overrides:
                value = _from_command_line(value, tp)
            if key == "resume_from_checkpoint" and isinstance(value, bool):
                value = str(value).lower()  # true/false besides a path; TrainingArguments types it as a str
            ok, value = _fits(value, tp)
            if not ok:
                # YAML reads an unquoted no/off/yes/on as a boolean
                quote = " (quote it to pass text, e.g. \"no\")" if isinstance(value, bool) and str in _arms(tp) else ""
                raise UserError(f"{origin}: recipe key {key!r} must be {_type_name(tp)}, got {value!r}{quote}")
            check_range(dc, key, value, origin)
            merged[key] = value
    missing = [
        name for name, (dc, f) in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in merged
    ]
    if missing:
        raise UserError(f"{source}: missing required recipe key {missing[0]!r}")
    parser = HfArgumentParser(list(dataclass_types))
    try:
        return parser.parse_dict(merged, allow_extra_keys=False)
    except (ValueError, TypeError) as e:
        raise UserError(f"{source}: {e}") from None


def recipe_help(dataclass_types: Sequence[type], prog: str) -> str:
    """`--help`: every recipe key with its type, default and documentation, grouped by dataclass."""
    parser = HfArgumentParser(list(dataclass_types), prog=prog)
    return parser.format_help()


def help_requested(argv: Sequence[str], dataclass_types: Sequence[type], prog: str) -> bool:
    """True, after printing `recipe_help`, when `argv` asks for it (`-h` or `--help` anywhere): every command's
    `main` starts with it."""
    if any(a in ("-h", "--help") for a in argv):
        print(recipe_help(dataclass_types, prog))
        return True
    return False


def refuse_remote_code(trust_remote_code) -> None:
    """The one answer to a recipe's `trust_remote_code: true`: no code shipped with a checkpoint ever runs."""
    if trust_remote_code:
        raise UserError("recipe key 'trust_remote_code': posttrain never runs code shipped with a checkpoint")
