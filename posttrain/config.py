"""Recipes: one flat YAML file per stage, in the TRL CLI convention (`--config recipe.yaml` plus `--key value`
overrides), parsed into the stage's dataclasses (the project's script arguments, TRL's `ModelConfig` and the
trainer's config).

Why not `TrlParser` alone: it copies YAML values into argparse defaults without checking them, so a typo'd key
or a string where a float belongs surfaces later as an unrelated traceback. Here every key must name a field of
one of the dataclasses and every value must fit the field's type; the error names the key and the file. The
dataclasses are then built by `HfArgumentParser.parse_dict`, so TRL's own `__post_init__` checks still run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

import yaml
from transformers import HfArgumentParser

from posttrain.errors import UserError


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping names the path."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def _split_argv(argv: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
    """`--config PATH` and `--key value` / `--key=value` pairs; values are read as YAML scalars."""
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
        parsed = [_scalar(v) for v in values] or [True]  # a bare flag
        overrides[key] = parsed[0] if len(parsed) == 1 else parsed
    return config, overrides


def _scalar(value: str):
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
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
            if key == "resume_from_checkpoint" and isinstance(value, bool):
                value = str(value).lower()  # true/false besides a path; TrainingArguments types it as a str
            ok, value = _fits(value, hints[dc][key])
            if not ok:
                raise UserError(
                    f"{origin}: recipe key {key!r} must be {_type_name(hints[dc][key])}, got {value!r}"
                )
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
