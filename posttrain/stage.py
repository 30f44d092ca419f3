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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch

from common.errors import UserError
from common.outputs import RUN_RECORD, StageOutput, write_json_atomic
from common.recipe import help_requested, parse_recipe, refuse_remote_code
from common.template import SPECIAL_TOKENS, THINK_CLOSE, THINK_OPEN, attach_template, is_project_template
from common.tokenizers import gguf_file, load_pretrained_tokenizer

logger = logging.getLogger("posttrain")

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
    defaults = {"bf16": False, "activation_checkpointing": False, "dataloader_pin_memory": False}
    # With no accelerator at all, say so: TrainingArguments then accepts `bf16: true` (CPU autocast) instead of
    # refusing it for want of a GPU.
    return defaults if torch.accelerator.is_available() else {**defaults, "use_cpu": True}


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str], prog: str, defaults: dict | None = None):
    """The stage's dataclass instances from `--config recipe.yaml --key value ...`, with `cpu_defaults()` under
    the stage's own `defaults` under the recipe. Returns None after printing `--help`."""
    if not logger.handlers:  # the stages' own messages (rows per mode, drops, learning rate) on stderr
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    if help_requested(argv, dataclass_types, prog):
        return None
    return parse_recipe(dataclass_types, argv, defaults={**cpu_defaults(), **(defaults or {})})


# ---------------------------------------------------------------------------------------------------- loading

def validate_model_args(model_args, training=None) -> None:
    """Checks that need no loading: run before data and model are touched."""
    if training is not None:
        refuse_remote_code(getattr(training, "trust_remote_code", False))
    if not model_args.model_name_or_path:
        raise UserError("missing required recipe key 'model_name_or_path' (the checkpoint this stage starts from)")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise UserError("recipe key 'load_in_4bit'/'load_in_8bit' needs 'use_peft: true' (QLoRA trains adapters only)")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("recipe key 'load_in_4bit'/'load_in_8bit' needs bitsandbytes: pip install 'posttrain[qlora]'")
    if gguf_file(model_args.model_name_or_path) and (model_args.load_in_4bit or model_args.load_in_8bit):
        raise UserError("a gguf: model is dequantized to float on load; drop 'load_in_4bit'/'load_in_8bit'")


def load_tokenizer(model_args, tokenizer_name_or_path: str | None = None, default_instructions: dict | None = None):
    """The tokenizer with the hybrid template attached and the hybrid tokens guaranteed to be single tokens.
    A checkpoint whose template is the project's keeps it (and the default instructions set in it) unless
    `default_instructions` is given; any other template is replaced.

    Returns (tokenizer, new_tokens): `new_tokens` maps each token added here to the ids it was spelled with
    before, which `load_model` needs to initialise its embedding row (see `init_new_embeddings`)."""
    from tokenizers import AddedToken

    path = tokenizer_name_or_path or model_args.model_name_or_path
    tokenizer = load_pretrained_tokenizer(path, revision=model_args.model_revision)
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


def peft_config(model_args, model, tokenizer, new_tokens: dict):
    """TRL's LoraConfig from the recipe's `use_peft` / `lora_*` keys, or None.

    Tokens `load_tokenizer` added (e.g. `<think>` for SmolLM2) get trainable embedding rows through PEFT's
    `trainable_token_indices`: with LoRA alone they would stay frozen at their mean-of-pieces init, and the model
    could hardly learn to emit them. The rows merge into the saved model with the adapter."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is None or not new_tokens or config.trainable_token_indices is not None:
        return config
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        # TRL 1.16's trainers score tokens through a fused LM head that reads `lm_head.weight` and `.bias` itself;
        # with tied embeddings PEFT wraps the head too, and the first step fails (the wrapper has no `bias`).
        raise UserError(f"{model_args.model_name_or_path}: recipe key 'use_peft': LoRA cannot train the rows of the "
                        f"tokens this tokenizer lacks ({', '.join(new_tokens)}) in a model with tied embeddings "
                        "under TRL's fused LM head; train fully (use_peft: false), or run LoRA from a checkpoint "
                        "that has them (a full SFT's)")
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
    gguf = gguf_file(name)
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
