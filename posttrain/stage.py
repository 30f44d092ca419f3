"""What every post-training stage shares: recipe parsing with CPU defaults, model/tokenizer/PEFT loading, the
atomic output directory and the run record.

A stage module (midtrain, sft, dpo, rlvr) is: `parse_args` -> `StageOutput(...)` (refuses to clobber a complete
output or anything posttrain did not write, writes nothing) -> `load_tokenizer` -> `data.stage_dataset` ->
`load_model` -> build a TRL trainer with `output_dir=out.partial` -> `run(...)`, which takes `<output_dir>.lock`,
trains into `<output_dir>.partial/` and renames it to `<output_dir>` only when the checkpoint and its
`posttrain_run.json` are complete. So bad input fails before anything is written, an interrupted stage never
leaves a half checkpoint where the next stage looks, and re-running the same command resumes from the last
complete checkpoint in `.partial` (whose run record, written at the start, must show the same recipe and data).

Checkpoints are always plain transformers checkpoints (safetensors, hybrid template attached): with LoRA the run
saves the adapter in `adapter/` AND the adapter merged into its base at the top level, so the next stage (and DPO's
reference model, which TRL reloads from the path) loads it with `AutoModelForCausalLM` and no PEFT code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch

from posttrain.chat_template import SPECIAL_TOKENS, THINK_CLOSE, THINK_OPEN, attach_template, is_project_template
from posttrain.config import parse_recipe, recipe_help
from posttrain.errors import UserError

logger = logging.getLogger("posttrain")

RUN_RECORD = "posttrain_run.json"
LOG_HISTORY = "log_history.json"
ADAPTER_DIR = "adapter"


@dataclass
class StageArguments:
    """Script arguments every stage has (each stage subclasses this and adds its own)."""

    datasets: list[dict] = field(
        default_factory=list,
        metadata={"help": "Data sources, each a mapping such as {name: arithmetic, rows: 4000, weight: 1.0} or "
                  "{name: messages, path: my.jsonl}; see posttrain/data.py for the adapters."},
    )
    no_think_fraction: float = field(
        default=0.5, metadata={"help": "Share of rows rendered in /no_think mode (the rest are /think)."}
    )
    overlong_policy: Literal["drop", "error"] = field(
        default="drop",
        metadata={"help": "Rows longer than max_length: 'drop' them (counted per mode in the run record) or "
                  "'error'. TRL would otherwise truncate them and silently drop the fully masked ones."},
    )
    default_instructions: dict | None = field(
        default=None,
        metadata={"help": "{think: text, no_think: text}: the instructions the chat template renders when a "
                  "conversation brings none (SmolLM3's by default). Unset: the starting checkpoint's, if its "
                  "template is the project's; set: saved in this stage's template for every later render."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use (a directory, Hub id or gguf: file); defaults to "
                                "model_name_or_path, whose GGUF file carries its tokenizer too."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace an existing complete output_dir (refused otherwise; only ever a "
                                 "directory posttrain wrote, one holding posttrain_run.json)."}
    )
    allow_think_without_reasoning: bool = field(
        default=False,
        metadata={"help": "SFT/DPO: accept /think rows whose (chosen) assistant reply carries no reasoning, which "
                  "train the think mode to skip thinking; refused by default. Counted in the run record "
                  "(data.think_without_reasoning) either way."},
    )


def cpu_defaults() -> dict:
    """TRL configs default to bf16 and activation checkpointing: bf16 refuses to start without a GPU ("Your setup
    doesn't support bf16/gpu") and checkpointing only costs time on CPU. Without CUDA these defaults sit under the
    recipe, so a tiny recipe runs as written on a laptop while a recipe's explicit value still wins. Recipes use
    `activation_checkpointing` (transformers 5.23's name): its deprecated alias `gradient_checkpointing` only
    applies when the new name is unset, so on CPU it would lose to this default."""
    if torch.cuda.is_available():
        return {}
    return {"bf16": False, "activation_checkpointing": False, "dataloader_pin_memory": False}


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str], prog: str, defaults: dict | None = None):
    """The stage's dataclass instances from `--config recipe.yaml --key value ...`, with `cpu_defaults()` under
    the stage's own `defaults` under the recipe. Returns None after printing `--help`."""
    if not logger.handlers:  # the stages' own messages (rows per mode, drops, learning rate) on stderr
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    if any(a in ("-h", "--help") for a in argv):
        print(recipe_help(dataclass_types, prog))
        return None
    return parse_recipe(dataclass_types, argv, defaults={**cpu_defaults(), **(defaults or {})})


# ---------------------------------------------------------------------------------------------------- loading

def validate_model_args(model_args, training=None) -> None:
    """Checks that need no loading: run before data and model are touched."""
    if training is not None and getattr(training, "trust_remote_code", False):
        raise UserError("recipe key 'trust_remote_code': posttrain never runs code shipped with a checkpoint")
    if not model_args.model_name_or_path:
        raise UserError("missing required recipe key 'model_name_or_path' (the checkpoint this stage starts from)")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise UserError("recipe key 'load_in_4bit'/'load_in_8bit' needs 'use_peft: true' (QLoRA trains adapters only)")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("recipe key 'load_in_4bit'/'load_in_8bit' needs bitsandbytes: pip install 'posttrain[qlora]'")
    if _gguf_file(model_args.model_name_or_path) and (model_args.load_in_4bit or model_args.load_in_8bit):
        raise UserError("a gguf: model is dequantized to float on load; drop 'load_in_4bit'/'load_in_8bit'")


def _gguf_file(name: str) -> Path | None:
    """`gguf:<package>/<file>.gguf` (a GGUF shipped in an installed Python package) or a path to a .gguf file."""
    if name.startswith("gguf:"):
        package, _, rel = name[len("gguf:"):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"model_name_or_path {name!r}: package {package!r} is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / rel
    elif name.endswith(".gguf"):
        path = Path(name)
    else:
        return None
    if not path.is_file():
        raise UserError(f"model_name_or_path {name!r}: {path} not found")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{path}: loading GGUF files needs the gguf package: pip install 'posttrain[gguf]'")
    return path


def load_tokenizer(model_args, tokenizer_name_or_path: str | None = None, default_instructions: dict | None = None):
    """The tokenizer with the hybrid template attached and the hybrid tokens guaranteed to be single tokens.
    A checkpoint whose template is the project's keeps it (and the default instructions set in it) unless
    `default_instructions` is given; any other template is replaced.

    Returns (tokenizer, new_tokens): `new_tokens` maps each token added here to the ids it was spelled with
    before, which `load_model` needs to initialise its embedding row (see `init_new_embeddings`)."""
    from transformers import AutoTokenizer
    from tokenizers import AddedToken

    path = tokenizer_name_or_path or model_args.model_name_or_path
    gguf = _gguf_file(path)
    try:
        if gguf is not None:  # the tokenizer a GGUF file carries (transformers converts it; needs `gguf`)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
    new_tokens = {}
    for token in SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            new_tokens[token] = ids
    for token in new_tokens:
        # think tags stay non-special so decoding with skip_special_tokens keeps them (evaluation reads them)
        special = token not in (THINK_OPEN, THINK_CLOSE)
        tokenizer.add_tokens([AddedToken(token, normalized=False, special=special)], special_tokens=special)
    if new_tokens:
        logger.info("added hybrid tokens %s to the tokenizer", list(new_tokens))
    if default_instructions is not None or not is_project_template(tokenizer.chat_template):
        attach_template(tokenizer, default_instructions)
    return tokenizer, new_tokens


def peft_config(model_args, tokenizer, new_tokens: dict):
    """TRL's LoraConfig from the recipe's `use_peft` / `lora_*` keys, or None.

    Tokens `load_tokenizer` added (e.g. `<think>` for SmolLM2) get trainable embedding rows through PEFT's
    `trainable_token_indices`: with LoRA alone they would stay frozen at their mean-of-pieces init, and the model
    could hardly learn to emit them. The rows merge into the saved model with the adapter."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is not None and new_tokens and config.trainable_token_indices is None:
        config.trainable_token_indices = sorted(tokenizer.convert_tokens_to_ids(list(new_tokens)))
    return config


def load_model(model_args, tokenizer, new_tokens: dict | None = None, quantize: bool = True):
    """The model a stage trains, from a saved checkpoint (safetensors only, no remote code) or a GGUF file.

    `quantize=False` loads the float base even when the recipe asks for QLoRA (used to merge the adapter)."""
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    validate_model_args(model_args)
    name = model_args.model_name_or_path
    kwargs = dict(dtype=model_args.dtype, attn_implementation=model_args.attn_implementation, trust_remote_code=False)
    qconfig = get_quantization_config(model_args) if quantize else None
    if qconfig is not None:
        from accelerate import PartialState

        # what trl.get_kbit_device_map did (removed in TRL 1.x): each process's own GPU
        kwargs.update(quantization_config=qconfig,
                      device_map={"": PartialState().local_process_index} if torch.cuda.is_available() else None)
    gguf = _gguf_file(name)
    try:
        if gguf is not None:
            model = _load_gguf(gguf, kwargs)
        else:
            local = name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()  # not a hub id
            if local and not Path(name).is_dir():
                raise UserError(f"{name}: checkpoint directory not found (a stage starts from a saved checkpoint)")
            model = AutoModelForCausalLM.from_pretrained(
                name, revision=model_args.model_revision, use_safetensors=True, **kwargs
            )
    except (OSError, ValueError) as e:  # ValueError: e.g. a config.json of an unknown model_type
        raise UserError(f"{name}: cannot load model ({str(e).splitlines()[0]})") from None
    init_new_embeddings(model, tokenizer, new_tokens or {})
    for config in (model.config, model.generation_config):
        if config is not None:
            config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
            config.bos_token_id = tokenizer.bos_token_id
    return model


def _load_gguf(path: Path, kwargs: dict):
    """transformers dequantizes a GGUF to float but then refuses `save_pretrained` ("quantized with gguf"): rebuild
    the same architecture from its config, without the quantization marker, and copy the weights in."""
    from transformers import AutoModelForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    config = gguf_model.config
    del config.quantization_config
    config._name_or_path = str(path)
    model = AutoModelForCausalLM.from_config(
        config, dtype=kwargs["dtype"], attn_implementation=kwargs["attn_implementation"], trust_remote_code=False
    )
    model.load_state_dict(gguf_model.state_dict())
    return model


def init_new_embeddings(model, tokenizer, new_tokens: dict[str, list[int]]) -> None:
    """Give each token added by `load_tokenizer` an embedding row (input and, if untied, output) equal to the mean
    of the rows of the pieces it was spelled with before. Measured on SmolLM2-135M (68 SFT steps, lr 1e-4): with
    resize's default init it never emitted `<think>` (0% /think adherence); with this init, 31%."""
    if not new_tokens:
        return
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    with torch.no_grad():
        for module in embeddings.values():
            for token, pieces in new_tokens.items():
                module.weight[tokenizer.convert_tokens_to_ids(token)] = module.weight[pieces].mean(0)


# ----------------------------------------------------------------------------------------- output directory

class StageOutput:
    """`<output_dir>.partial/` while training, renamed to `<output_dir>` when the stage is complete; one writer at
    a time, through the lock file `<output_dir>.lock`.

    Constructing it only checks (nothing is written): output_dir must be a directory path whose parent is not a
    file; an existing non-empty output_dir must be one this toolkit wrote (it holds posttrain_run.json) and is
    replaced only with `overwrite`. A file or a foreign directory is never touched, overwrite or not."""

    def __init__(self, output_dir: str, overwrite: bool = False):
        self.final = Path(output_dir)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.lock_path = self.final.with_name(self.final.name + ".lock")
        self.overwrite = overwrite
        self.check()

    def check(self) -> None:
        """Refuse an output_dir this run must not write; run again under the lock (another run may have
        finished in between)."""
        for parent in self.final.parents:
            if parent.exists() and not parent.is_dir():
                raise UserError(f"output_dir {self.final}: {parent} is a file, not a directory")
        for path in (self.final, self.partial):
            if path.exists() and not path.is_dir():
                raise UserError(f"output_dir {self.final}: {path} is a file, not a directory; choose another "
                                "output_dir (posttrain never deletes a file it did not write)")
        if not self.final.is_dir() or not any(self.final.iterdir()):
            return
        if not (self.final / RUN_RECORD).is_file():
            raise UserError(f"output_dir {self.final} is a non-empty directory that posttrain did not write (no "
                            f"{RUN_RECORD}); choose another output_dir (it is never overwritten)")
        if not self.overwrite:
            raise UserError(f"output_dir {self.final} already holds a complete output; set overwrite_output_dir: "
                            "true to replace it")

    @contextlib.contextmanager
    def lock(self):
        """Hold `<output_dir>.lock` ({pid, host}, created with O_EXCL) while writing: a second writer fails naming
        the owner; a lock left by a dead process of this host (kill -9) is taken over. Released on any exit."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        while True:
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                owner = _lock_owner(self.lock_path)
                if owner is None or owner.get("host") != me["host"] or _alive(owner.get("pid")):
                    raise self._locked(owner) from None
                # Moved aside, not deleted: of two runs taking over at once, one moves the dead lock and the
                # other finds it gone (or moves the winner's, and gives it back).
                stale = self.lock_path.with_name(f"{self.lock_path.name}.{me['pid']}.stale")
                try:
                    os.rename(self.lock_path, stale)
                except FileNotFoundError:
                    continue
                if _lock_owner(stale) != owner:
                    os.replace(stale, self.lock_path)
                    raise self._locked(_lock_owner(self.lock_path))
                stale.unlink()
                logger.info("%s: taking over the lock of pid %s (no longer running)", self.lock_path, owner["pid"])
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        try:
            self.check()
            yield
        finally:
            self.lock_path.unlink(missing_ok=True)

    def _locked(self, owner: dict | None) -> UserError:
        return UserError(f"output_dir {self.final} is being written by another run ({self.lock_path}: "
                         f"{owner or 'unreadable'}); wait for it, or delete the lock if that run is gone")

    def abandon(self) -> None:
        """Remove the empty `.partial` the Trainer creates when it is built, for a stage that fails a check made
        after that (a `.partial` holding resume checkpoints is kept)."""
        if self.partial.is_dir() and not any(self.partial.iterdir()):
            self.partial.rmdir()

    def resume_point(self, resume: str | None, name: str, record: dict) -> str | None:
        """The checkpoint to resume from, per `resume_from_checkpoint`: unset or true, the last complete
        `checkpoint-N` in `.partial` (true: one must exist), if the run that wrote it had the same recipe and data;
        false, none (start over); else the path given. Checks only: `start` writes."""
        if resume not in (None, "true", "false"):
            if not (Path(resume) / "trainer_state.json").is_file():
                raise UserError(f"recipe key 'resume_from_checkpoint': {resume} is not a complete Trainer "
                                "checkpoint (no trainer_state.json)")
            return resume
        checkpoint = None if resume == "false" else last_complete_checkpoint(self.partial)
        if checkpoint is None:
            if resume == "true":
                raise UserError(f"recipe key 'resume_from_checkpoint': true, but {self.partial} holds no complete "
                                "checkpoint to resume from")
            return None
        previous = read_run_record(self.partial)
        if previous is None:
            raise UserError(f"{self.partial}: checkpoints without a {RUN_RECORD} to compare the recipe with; set "
                            "resume_from_checkpoint: false to start over, or to a checkpoint path")
        changed = _differences(_comparable(previous), _comparable(record))
        if changed:
            raise UserError(f"{self.partial}: the recipe changed since the interrupted run ({'; '.join(changed)}); "
                            "re-run it unchanged to resume, or set resume_from_checkpoint: false to start over")
        logger.info("%s: resuming from %s (resume_from_checkpoint: false starts over)", name, checkpoint)
        return str(checkpoint)

    def start(self, record: dict, keep_partial: bool = False) -> None:
        """Clear a stale `.partial` left by an interrupted run (kept when resuming from one of its checkpoints)
        and write the run's recipe into it, to be compared by a later resume."""
        if self.partial.exists() and not keep_partial:
            if any(self.partial.iterdir()):
                logger.info("%s: starting over, discarding %s", self.final, self.partial)
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.partial / RUN_RECORD, record)

    def commit(self) -> Path:
        """Drop the Trainer's resume checkpoints and move the finished output into place (under `lock`)."""
        for checkpoint in self.partial.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
        if self.final.exists():  # an output this toolkit wrote (`check`), replaced with overwrite_output_dir
            old = self.final.with_name(self.final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            self.final.rename(old)
            self.partial.rename(self.final)
            shutil.rmtree(old)
        else:
            self.partial.rename(self.final)
        return self.final


def _lock_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True  # unknown owner: never taken over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process, alive
    return True


def last_complete_checkpoint(directory: Path) -> Path | None:
    """The highest `checkpoint-N` whose trainer_state.json (the Trainer writes it last) is readable JSON: a
    checkpoint cut short by a kill is skipped."""
    steps = []
    for path in directory.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            steps.append((int(path.name.split("-")[-1]), path))
        except (OSError, ValueError):
            continue
    return max(steps)[1] if steps else None


def _comparable(record: dict) -> dict:
    """What must match for a resume to continue the same run: every recipe key (but those that only say how to
    start) and the data's fingerprint."""
    values = {k: v for group in (record.get("recipe") or {}).values() for k, v in group.items()
              if k not in ("resume_from_checkpoint", "overwrite_output_dir")}
    return {**values, "data fingerprint": (record.get("data") or {}).get("fingerprint")}


def _differences(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every key whose value differs."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def write_json_atomic(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- running

def recipe_record(*dataclass_instances) -> dict:
    """Every resolved recipe value (defaults included), keyed by dataclass name."""
    record = {}
    for obj in dataclass_instances:
        values = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        record[type(obj).__name__] = json.loads(json.dumps(values, default=str))
    return record


@dataclass
class StageRun:
    """A stage ready to train: its trainer (built with `output_dir=out.partial`) and what `run` needs to save.

    Stage modules return one from `build(...)`; tests inspect `trainer` (its prepared dataset, collator) without
    training, and `main` calls `run()`."""

    name: str
    trainer: object
    out: StageOutput
    model_args: object
    tokenizer: object
    new_tokens: dict
    record: dict  # the stage's own facts: recipe, data fingerprints, rows per mode, learning-rate origin, ...

    def run(self) -> Path:
        """Train (resuming from `.partial`, see `StageOutput.resume_point`), save the checkpoint (merged model +
        `adapter/` with LoRA), `posttrain_run.json` and `log_history.json` into `out.partial`, then rename it to
        the output dir. Rank 0 holds the output's lock throughout."""
        trainer, out = self.trainer, self.out
        with out.lock() if trainer.is_world_process_zero() else contextlib.nullcontext():
            try:
                resume = out.resume_point(_resume_value(trainer.args.resume_from_checkpoint), self.name, self.record)
            except UserError:
                out.abandon()  # the empty `.partial` the Trainer made; checkpoints are kept
                raise
            if trainer.is_world_process_zero():
                out.start({"stage": self.name, **self.record, "command": sys.argv},
                          keep_partial=resume is not None and Path(resume).parent == out.partial)
            trainer.accelerator.wait_for_everyone()
            t0 = time.time()
            result = trainer.train(resume_from_checkpoint=resume)
            wall_s = time.time() - t0
            peft = self.model_args.use_peft
            trainer.save_model(str(out.partial / ADAPTER_DIR) if peft else str(out.partial))
            trainer.accelerator.wait_for_everyone()
            if not trainer.is_world_process_zero():
                return out.final
            if peft:
                _save_merged(out.partial, self.model_args, self.tokenizer, self.new_tokens)
            self.tokenizer.save_pretrained(out.partial)
            for pickled in out.partial.rglob("training_args.bin"):  # a pickle; the run record holds the recipe
                pickled.unlink()
            record = {
                "stage": self.name,
                **self.record,
                "learning_rate": trainer.args.learning_rate,
                "train_metrics": result.metrics,
                "global_step": trainer.state.global_step,
                "resumed_from": resume,
                "world_size": trainer.accelerator.num_processes,
                "wall_s": round(wall_s, 2),
                "command": sys.argv,
            }
            (out.partial / LOG_HISTORY).write_text(json.dumps(trainer.state.log_history, indent=2))
            write_json_atomic(out.partial / RUN_RECORD, record)
            final = out.commit()
        logger.info("%s: done in %.1f s, checkpoint at %s", self.name, wall_s, final)
        return final


def _resume_value(value) -> str | None:
    """`resume_from_checkpoint` as `resume_point` reads it: None (unset), "true", "false" or a path. The config
    reads YAML's true/false into the strings (TrainingArguments types the key as a str)."""
    return None if value in (None, "") else str(value)


def _save_merged(directory: Path, model_args, tokenizer, new_tokens: dict) -> None:
    """The saved adapter merged into a freshly loaded float base (the only way that also works for QLoRA, whose
    training base is 4-bit): the next stage loads a plain model."""
    from peft import PeftModel

    base = load_model(model_args, tokenizer, new_tokens, quantize=False)
    merged = PeftModel.from_pretrained(base, str(directory / ADAPTER_DIR)).merge_and_unload()
    merged.save_pretrained(directory)


def read_run_record(checkpoint: str | Path) -> dict | None:
    """The `posttrain_run.json` of a checkpoint made by a stage, or None if it has none."""
    path = Path(checkpoint) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
