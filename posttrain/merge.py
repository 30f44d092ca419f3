"""`posttrain merge`: a linear merge (model soup) of checkpoints of one architecture, as SmolLM3 merged its
APO model with a mid-training checkpoint to recover long-context ability.

    posttrain merge --models runs/a runs/b --weights 0.7 0.3 --output_dir runs/merged

Why not MergeKit: a linear merge is a weighted sum per tensor, a few lines over `safetensors`; MergeKit is a
large dependency (its own model-architecture tables, pinned transformers range) for that one operation.

How: every checkpoint's safetensors headers are read first (keys, shapes, dtypes; no tensor data), and the
configs, keys and shapes must agree -- an error names the file and tensor that differ. Then the output is
written shard by shard: each tensor is read from every input (memory-mapped), summed in float32, cast back to
the first model's dtype and kept until its shard (at most `max_shard_size`) is written. Peak memory is one
shard plus one float32 tensor, not two models.

Weights are normalised to sum to 1 (MergeKit's `linear` default): `--weights 2 1` means 2/3 and 1/3. They must
be >= 0 (a negative weight is task arithmetic, not a soup). Tied weights (the LM head sharing the embedding
when `tie_word_embeddings` is set) are left out of the inputs and the output as `save_pretrained` leaves them
out; transformers re-ties them on load, so the head is the merged embedding. The config, generation config
and tokenizer come from the first model. The output is written into `<output_dir>.partial/` and renamed to
`<output_dir>` with its `posttrain_run.json` when complete.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from common.errors import UserError
from common.outputs import RUN_RECORD, StageOutput, write_json_atomic
from common.recipe import help_requested, parse_recipe
from common.tokenizers import load_pretrained_tokenizer

logger = logging.getLogger("posttrain")

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
# config.json keys that may differ between checkpoints of one architecture
CONFIG_IGNORED = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache"}
FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}  # safetensors dtype names of averageable tensors


@dataclass
class MergeArguments:
    """`posttrain merge` recipe keys."""

    models: list[str] = field(metadata={"help": "Checkpoint directories to merge (two or more, same architecture)."})
    output_dir: str = field(metadata={"help": "Where the merged checkpoint goes."})
    weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per model, >= 0, normalised to sum to 1. Default: equal weights."}
    )
    max_shard_size: str = field(
        default="2GB", metadata={"help": "Largest output shard; also about the peak memory of the merge."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing output_dir."})


@dataclass
class Checkpoint:
    """One input: where each tensor lives, and its shape and dtype (from the safetensors headers)."""

    path: Path
    config: dict
    tensors: dict[str, tuple[Path, list[int], str]]  # key -> (file, shape, dtype)


def normalise_weights(weights: list[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise UserError(f"recipe key 'weights': {len(weights)} weights for {n} models")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"recipe key 'weights': must be >= 0 with a positive sum, got {weights}")
    return [w / sum(weights) for w in weights]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Config and tensor headers of a transformers checkpoint (one safetensors file or a sharded index)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a checkpoint directory (no config.json)")
    if (path / INDEX).is_file():
        files = sorted({path / f for f in _read_json(path / INDEX).get("weight_map", {}).values()})
    elif (path / WEIGHTS).is_file():
        files = [path / WEIGHTS]
    else:
        raise UserError(f"{path}: no {WEIGHTS} or {INDEX} (only safetensors checkpoints are merged)")
    tensors = {}
    for file in files:
        try:
            with safe_open(file, "pt") as f:
                for key in f.keys():
                    piece = f.get_slice(key)
                    tensors[key] = (file, piece.get_shape(), piece.get_dtype())
        except (OSError, SafetensorError) as e:
            raise UserError(f"{file}: not a readable safetensors file ({e})") from None
    return Checkpoint(path, _read_json(path / "config.json"), tensors)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def tied_keys(path: Path) -> set[str]:
    """Parameters that share another's storage under this config (the LM head when embeddings are tied), from
    transformers' own tying rules on a model built on the meta device (no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path / 'config.json'}: not a config transformers knows ({str(e).splitlines()[0]})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return set(model.get_expanded_tied_weights_keys(all_submodels=True))


def check_compatible(checkpoints: list[Checkpoint], tied: set[str]) -> list[str]:
    """The keys to merge (tied copies left out); raises naming the first config key or tensor that differs."""
    first = checkpoints[0]
    keys = sorted(set(first.tensors) - tied)
    for other in checkpoints[1:]:
        for key in sorted((set(first.config) | set(other.config)) - CONFIG_IGNORED):
            if first.config.get(key) != other.config.get(key):
                raise UserError(f"{other.path / 'config.json'}: {key!r} is {other.config.get(key)!r}, "
                                f"{first.path / 'config.json'} has {first.config.get(key)!r}")
        other_keys = set(other.tensors) - tied
        for key in sorted(other_keys ^ set(keys)):
            has, lacks = (other, first) if key in other_keys else (first, other)
            raise UserError(f"{lacks.path}: no tensor {key!r} (it is in {has.tensors[key][0]})")
    for key in keys:
        for ckpt in checkpoints:
            file, shape, dtype = ckpt.tensors[key]
            if dtype not in FLOAT_BYTES:
                raise UserError(f"{file}: tensor {key!r} has dtype {dtype}; only float tensors can be averaged")
            if shape != first.tensors[key][1]:
                raise UserError(f"{file}: tensor {key!r} has shape {shape}, "
                                f"{first.tensors[key][0]} has {first.tensors[key][1]}")
    return keys


def merge(models: list[str | Path], weights: list[float] | None, output_dir: str | Path, *,
          max_shard_size: str = "2GB", overwrite: bool = False) -> Path:
    """Write the weighted average of `models` to `output_dir` (see the module docstring). Every check runs
    before anything is written. Returns the output directory."""
    start = time.perf_counter()
    if len(models) < 2:
        raise UserError(f"recipe key 'models': a merge needs two or more checkpoints, got {len(models)}")
    weights_given, weights = weights, normalise_weights(weights, len(models))
    out = StageOutput(str(output_dir), overwrite=overwrite)
    checkpoints = [read_checkpoint(m) for m in models]
    tied = tied_keys(checkpoints[0].path)
    keys = check_compatible(checkpoints, tied)
    tokenizer = None
    if (checkpoints[0].path / "tokenizer_config.json").is_file():
        tokenizer = load_pretrained_tokenizer(checkpoints[0].path)
    first = checkpoints[0].tensors
    try:
        plan = split_state_dict_into_shards_factory(
            {key: first[key] for key in keys}, filename_pattern="model{suffix}.safetensors",
            max_shard_size=max_shard_size,
            get_storage_size=lambda header: FLOAT_BYTES[header[2]] * torch.Size(header[1]).numel(),
        )
    except ValueError:
        raise UserError(f"recipe key 'max_shard_size': {max_shard_size!r} is not a size like 2GB or 500MB") from None
    with out.lock():
        out.start({"stage": "merge", "models": [str(m) for m in models], "weights": weights, "command": sys.argv})
        _write(out.partial, checkpoints, weights, keys, plan, tokenizer)
        record = {
            "stage": "merge", "models": [str(m) for m in models], "weights": weights, "weights_given": weights_given,
            "tensors": len(keys), "tied_left_out": sorted(k for k in tied if any(k in c.tensors for c in checkpoints)),
            "files": list(plan.filename_to_tensors), "tokenizer_from": str(models[0]) if tokenizer else None,
            "wall_s": round(time.perf_counter() - start, 2), "command": sys.argv,
        }
        write_json_atomic(out.partial / RUN_RECORD, record)
        final = out.commit()
    logger.info("merge: %d tensors of %d models (weights %s) -> %s", len(keys), len(models),
                [round(w, 4) for w in weights], final)
    return final


def _write(directory: Path, checkpoints: list[Checkpoint], weights: list[float], keys: list[str], plan,
           tokenizer) -> None:
    """The merged shards, index, configs and tokenizer, into `directory`."""
    with ExitStack() as stack:
        handles = {}  # (checkpoint index, file) -> open safetensors file, memory-mapped

        def tensor(i: int, key: str) -> torch.Tensor:
            file = checkpoints[i].tensors[key][0]
            if (i, file) not in handles:
                handles[i, file] = stack.enter_context(safe_open(file, "pt"))
            return handles[i, file].get_tensor(key)

        for filename, shard_keys in plan.filename_to_tensors.items():
            shard = {}
            for key in shard_keys:
                first_tensor = tensor(0, key)
                total = first_tensor.to(torch.float32, copy=True).mul_(weights[0])
                for i in range(1, len(checkpoints)):
                    total.add_(tensor(i, key).to(torch.float32), alpha=weights[i])
                shard[key] = total.to(first_tensor.dtype)
            save_file(shard, directory / filename, metadata={"format": "pt"})
    if plan.is_sharded:
        index = {"metadata": plan.metadata, "weight_map": plan.tensor_to_filename}
        (directory / INDEX).write_text(json.dumps(index, indent=2))
    for name in ("config.json", "generation_config.json"):
        if (checkpoints[0].path / name).is_file():
            shutil.copy2(checkpoints[0].path / name, directory / name)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def main(argv):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if help_requested(argv, [MergeArguments], "posttrain merge"):
        return 0
    (args,) = parse_recipe([MergeArguments], argv)
    merge(args.models, args.weights, args.output_dir, max_shard_size=args.max_shard_size,
          overwrite=args.overwrite_output_dir)
    return 0
