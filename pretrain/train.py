"""`pretrain train`: a SmolLM3-architecture model from random init, on the packed mixture from `pretrain.data`.

A plain `accelerate` loop rather than `transformers.Trainer`: the batch of a step is a pure function of
(seed, rank, step), so resuming needs no dataloader replay or sampler state; the curriculum stage and
per-source token counts live in our checkpoint; and a WSD decay can branch off any stable-phase
checkpoint into a new run. The pieces Trainer would bring come from the libraries directly:
`Accelerator` (DDP/FSDP, mixed precision, `save_state`/`load_state`, trackers), transformers'
`get_wsd_schedule` / cosine schedules and `get_parameter_names` (for the no-decay groups).

Run layout (the project's atomic-output rule: a run writes into `<output_dir>.partial/` and renames it to
`<output_dir>` when done, so an interrupted run is never mistaken for a base model):

    <output_dir>.partial/tokenizer/            trained tokenizer (tokenizer spec in the recipe)
                         tokens/               token files (unless `data_dir` is set)
                         checkpoints/step-N/   model, optimizer, RNG states + trainer_state.json (step, plan,
                                               curriculum state and the run's identity)
                         log_history.jsonl     one {step, loss, lr, tokens, stage, ...} line per log step
    then model.safetensors, config.json, tokenizer files, pretrain_state.json and log_history.json (the same
    entries as one list, what the pipeline plots), and the rename.

Checkpoints are written to `checkpoints/tmp-step-N` and renamed when complete; re-running the same command
resumes from the newest one (after a kill -9 too) and continues the same loss curve: the log is cut back to
the checkpoint's step and the steps after it are replayed. A changed recipe (data, tokenizer, model, batch, and
any other key but those in RESUME_MAY_CHANGE, e.g. the learning rate or max_steps) is refused before the tokenizer
or token files are touched, naming each changed key; `--start_over` deletes the checkpoints and trains from step 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import SmolLM3ForCausalLM, get_cosine_with_min_lr_schedule_with_warmup, get_wsd_schedule
from transformers.trainer_pt_utils import get_parameter_names

from common.errors import UserError
from pretrain.data import (
    Curriculum, DataConfig, PackedLoader, check_inputs, data_dir_of, load_tokenizer, open_sources, prepare,
    source_fingerprint, tokenizer_hash,
)
from pretrain.presets import model_config

# transformers' no-weight-decay name patterns (Trainer.get_decay_parameter_names); embeddings are excluded by type.
NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
# Dense bf16 peak of known accelerators, for MFU when `peak_tflops` is not set.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0}
# What a resumed run must share with its checkpoint (`run_identity`), in the order checked: the data before
# the tokenizer trained on it. tokens_per_step = seq_len x micro_batch_size x processes x accumulation.
RESUME_KEYS = ("seq_len", "micro_batch_size", "tokens_per_step", "seed", "stages", "sources", "tokenizer", "model")
# Recipe keys a resumed run may change: where and how often it logs and saves, threads, trackers, activation
# checkpointing (none changes a step's result), and the batch split when tokens_per_step (checked above) stays
# the same, e.g. accumulation doubled on half the processes. Any other change is refused (a new learning_rate was
# ignored, the run continuing on the checkpoint's schedule) unless `start_over`.
RESUME_MAY_CHANGE = (
    "output_dir", "data_dir", "save_steps", "keep_last", "logging_steps", "report_to", "project", "run_name",
    "torch_threads",
    "peak_tflops", "gradient_checkpointing", "gradient_accumulation_steps", "global_batch_tokens", "start_over",
)
# What `pretrain tokenize` would rewrite under a run that has checkpoints.
TOKENIZE_KEYS = ("sources", "tokenizer")
# What a `decay_from` run continues: the model and the shape of its batches (its data may be new).
DECAY_KEYS = ("seq_len", "micro_batch_size", "tokens_per_step", "tokenizer", "model")


@dataclass
class TrainConfig:
    """Recipe keys for the model, optimizer, schedule, checkpoints and logging."""

    output_dir: str = field(
        metadata={"help": "Where the final checkpoint goes (work happens in <output_dir>.partial)."}
    )
    model: str = field(
        default="tiny", metadata={"help": "Model preset from pretrain/presets.py: tiny, small, smollm3-3b."}
    )
    model_overrides: dict = field(
        default_factory=dict,
        metadata={"help": "SmolLM3Config fields that override the preset, e.g. {num_hidden_layers: 2}."},
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={"help": "sdpa, eager, flash_attention_2, or auto: eager on a CPU with native bf16 (its sdpa kernel "
                  "is slow under bf16 autocast), else sdpa (common/hardware.py)."},
    )
    micro_batch_size: int = field(default=8, metadata={"help": "Rows per forward pass on each process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    global_batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per optimizer step over all processes; when set, gradient accumulation is derived from it "
            "(it must divide evenly by seq_len x micro_batch_size x processes)."
        },
    )
    max_steps: int = field(
        default=0, metadata={"help": "Optimizer steps; 0 = the stages' token budgets divided by the global batch."}
    )
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW weight decay (never on norms, biases or embeddings)."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables."})
    lr_scheduler: Literal["wsd", "cosine"] = field(
        default="wsd",
        metadata={"help": "wsd: warmup, stable, decay over the last decay_fraction; cosine: for comparison."},
    )
    warmup_steps: int = field(default=100, metadata={"help": "Linear warmup steps."})
    decay_fraction: float = field(default=0.1, metadata={"help": "WSD: share of the steps spent decaying."})
    decay_type: Literal["linear", "cosine", "1-sqrt"] = field(default="linear", metadata={"help": "WSD decay shape."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Final learning rate as a share of the peak."})
    decay_from: str | None = field(
        default=None,
        metadata={
            "help": "A stable-phase checkpoint (.../checkpoints/step-N) to start the WSD decay from without "
            "retraining: "
            "the run continues from step N for decay_fraction/(1-decay_fraction)*N steps on the last stage's mixture."
        },
    )
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every this many steps (0: never)."})
    keep_last: int = field(default=2, metadata={"help": "Checkpoints kept (older ones deleted); 0 keeps all."})
    seed: int = field(
        default=42, metadata={"help": "Init seed (same on every rank) and data seed (mixed with the rank)."}
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = field(
        default="no",
        metadata={"help": "Autocast precision; `auto`: bf16 where the hardware computes it natively (CUDA, CPUs with "
                  "avx512_bf16 or AMX), else no (common/hardware.py)."},
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    torch_threads: int = field(
        default=0,
        metadata={"help": "CPU threads per process (torch.set_num_threads); 0 keeps torch's default (one per core)."},
    )
    report_to: str = field(
        default="none", metadata={"help": "Trackers by HF name, comma-separated (tensorboard, wandb, ...) or none."}
    )
    project: str = field(default="pretrain", metadata={"help": "Tracker project (accelerate's project_name)."})
    run_name: str = field(default="pretrain", metadata={"help": "The run's name in the project (trackio, wandb)."})
    logging_steps: int = field(default=10, metadata={"help": "Log every this many steps."})
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "Accelerator peak TFLOP/s for MFU; default: known GPUs' dense bf16 peak, none on CPU."},
    )
    start_over: bool = field(
        default=False,
        metadata={"help": "Delete the checkpoints in <output_dir>.partial and train from step 0 (a run resumes "
                  "only with an unchanged recipe; token files and tokenizer are reused while still fresh)."},
    )

    def __post_init__(self):  # each key's range: common.recipe.RANGES, checked by parse_recipe
        if self.save_steps % self.logging_steps:  # a log line averages the steps since the last one
            raise UserError(
                f"recipe key 'save_steps' ({self.save_steps}) must be a multiple of 'logging_steps' "
                f"({self.logging_steps}): only then does a resumed run log what an uninterrupted one does"
            )
        if self.decay_from and self.lr_scheduler != "wsd":
            raise UserError("recipe key 'decay_from' needs lr_scheduler: wsd")


def work_dir_of(output_dir: str | Path) -> Path:
    return Path(f"{output_dir}.partial")


# ---------------------------------------------------------------- model and optimizer


def model_config_of(cfg: TrainConfig, tokenizer):
    """The run's SmolLM3Config: the preset sized to the tokenizer, with the recipe's overrides."""
    return model_config(
        cfg.model, tokenizer=tokenizer, attn_implementation=cfg.attn_implementation, **cfg.model_overrides
    )


def build_model(cfg: TrainConfig, tokenizer) -> SmolLM3ForCausalLM:
    """Random init with the config's std, seeded with `seed` on every rank: data-parallel replicas start
    identical, and under FSDP each rank's shard is a slice of the one full initialisation, so shards are
    never copies of each other (what happens when each rank initialises its own shard from the same seed)."""
    config = model_config_of(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    return SmolLM3ForCausalLM(config)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms and biases (transformers' rule) nor, as SmolLM3, on the
    embeddings (tied with the output layer)."""
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm, torch.nn.Embedding], NO_DECAY_PATTERNS))
    params = list(model.named_parameters())
    return [
        {"params": [p for n, p in params if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]


def make_scheduler(optimizer, cfg: TrainConfig, plan: dict, last_epoch: int):
    """The LR at step s is a pure function of s: built fresh on resume with `last_epoch` (no state to load)."""
    if cfg.lr_scheduler == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, cfg.warmup_steps, plan["max_steps"], min_lr_rate=cfg.min_lr_ratio, last_epoch=last_epoch
        )
    return get_wsd_schedule(
        optimizer, cfg.warmup_steps, plan["decay_steps"], num_stable_steps=plan["decay_start"] - cfg.warmup_steps,
        decay_type=cfg.decay_type, min_lr_ratio=cfg.min_lr_ratio, last_epoch=last_epoch,
    )


def flops_per_token(config, n_params: int, seq_len: int) -> float:
    """6N for the matmuls plus causal attention, 6·L·s·d (the formula of the MFU figures in docs/facts.md)."""
    return 6 * n_params + 6 * config.num_hidden_layers * seq_len * config.hidden_size


def throughput(tokens_per_s: float, fpt: float, peak: float | None, num_processes: int) -> dict:
    """Log fields for the whole job's tokens/s: its achieved TFLOP/s and, with a known per-device peak, MFU
    against the peak of all `num_processes` devices (the tokens are every process's)."""
    fields = {"tokens_per_s": round(tokens_per_s, 1), "tflops": round(tokens_per_s * fpt / 1e12, 4)}
    if peak:
        fields["mfu"] = round(tokens_per_s * fpt / (num_processes * peak), 4)
    return fields


def peak_flops(cfg: TrainConfig) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


# ---------------------------------------------------------------- plan, checkpoints


def batch_shape(cfg: TrainConfig, seq_len: int, world: int) -> tuple[int, int]:
    """(gradient accumulation steps, tokens per optimizer step)."""
    per_micro = seq_len * cfg.micro_batch_size * world
    accum = cfg.gradient_accumulation_steps
    if cfg.global_batch_tokens:
        accum, rest = divmod(cfg.global_batch_tokens, per_micro)
        if rest or not accum:
            raise UserError(
                f"recipe key 'global_batch_tokens': {cfg.global_batch_tokens:,} is not a multiple of seq_len x "
                f"micro_batch_size x processes = {per_micro:,}"
            )
    return accum, per_micro * accum


def make_plan(cfg: TrainConfig, curriculum: Curriculum, decay_source: dict | None) -> dict:
    """Step counts of the schedule. A `decay_from` run stays stable up to the checkpoint's step N and then
    decays for decay_fraction/(1 - decay_fraction) * N steps, i.e. the last decay_fraction of N + decay steps."""
    if decay_source:
        n = decay_source["step"]
        if n < cfg.warmup_steps or n > decay_source["plan"]["decay_start"]:
            raise UserError(f"recipe key 'decay_from': step {n} is not in the stable phase of its run")
        decay = max(1, round(cfg.decay_fraction * n / (1 - cfg.decay_fraction)))
        return {"max_steps": n + decay, "decay_steps": decay, "decay_start": n}
    max_steps = cfg.max_steps or curriculum.total_steps
    decay = round(cfg.decay_fraction * max_steps) if cfg.lr_scheduler == "wsd" else 0
    if cfg.warmup_steps + decay > max_steps:
        raise UserError(
            f"recipe key 'warmup_steps': {cfg.warmup_steps} warmup + {decay} decay steps exceed max_steps {max_steps}"
        )
    return {"max_steps": max_steps, "decay_steps": decay, "decay_start": max_steps - decay}


def read_checkpoint_state(path: Path, key: str) -> dict:
    state_file = Path(path) / "trainer_state.json"
    if not state_file.is_file():
        raise UserError(f"{path}: recipe key {key!r}: not a pretrain checkpoint (no trainer_state.json)")
    return json.loads(state_file.read_text())


def latest_checkpoint(root: Path) -> Path | None:
    done = [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def save_checkpoint(accelerator: Accelerator, root: Path, state: dict, keep_last: int) -> None:
    """Every rank writes its part into tmp-step-N; the main process adds the trainer state and renames it."""
    step = state["step"]
    tmp, final = root / f"tmp-step-{step:08d}", root / f"step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        kept = sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in kept[: -keep_last] if keep_last else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------- the run


class Meter:
    """Mean loss (over ranks) and tokens/s over the steps since the last log line."""

    def __init__(self, device):
        self.loss, self.steps, self.start = torch.zeros((), device=device), 0, time.perf_counter()

    def read(self, accelerator: Accelerator, tokens_per_step: int) -> tuple[float, float]:
        loss = (accelerator.reduce(self.loss, "mean") / self.steps).item()
        tokens_per_s = self.steps * tokens_per_step / (time.perf_counter() - self.start)
        self.loss.zero_()
        self.steps, self.start = 0, time.perf_counter()
        return loss, tokens_per_s


def run_identity(data: DataConfig, cfg: TrainConfig, tokens_per_step: int | None, tokenizer) -> dict:
    """What fixes every step's batch and the model, JSON-normalised to compare with a checkpoint's.
    `tokenizer` None (a spec whose tokenizer is still to be trained) leaves 'tokenizer' and 'model' unset;
    `tokens_per_step` None: the world size is unknown (`pretrain tokenize`)."""
    identity = {
        "seq_len": data.seq_len, "micro_batch_size": cfg.micro_batch_size, "tokens_per_step": tokens_per_step,
        "seed": cfg.seed, "stages": [dataclasses.asdict(s) for s in data.stage_list],
        "sources": {s.name: source_fingerprint(s) for s in data.source_list}, "tokenizer": None, "model": None,
    }
    if tokenizer is not None:
        model = model_config_of(cfg, tokenizer).to_diff_dict()
        model = {k: v for k, v in model.items() if k != "transformers_version"} | {"preset": cfg.model}
        identity |= {"tokenizer": tokenizer_hash(tokenizer), "model": model}
    return json.loads(json.dumps(identity))


def check_identity(saved: dict, identity: dict, keys: tuple[str, ...], where: str, advice: str = "") -> None:
    """One line naming the first key whose value differs from the checkpoint's."""
    for key in keys:
        if saved.get(key) != identity[key]:
            raise UserError(f"{where}: this run's {key!r} differs from the checkpoint's{advice}")


def check_resume(data: DataConfig, cfg: TrainConfig, tokens_per_step: int | None,
                 keys: tuple[str, ...] = RESUME_KEYS) -> tuple[Path | None, dict | None]:
    """The newest complete checkpoint in <output_dir>.partial and its state, once the recipe is checked to
    continue it on `keys`. It reads only, and runs before the tokenizer and token files are (re)made: a
    changed spec or source would otherwise overwrite what the checkpoint was trained on."""
    work = work_dir_of(cfg.output_dir)
    resume = latest_checkpoint(work / "checkpoints")
    if resume is None:
        return None, None
    state = read_checkpoint_state(resume, "output_dir")
    identity = run_identity(data, cfg, tokens_per_step, load_tokenizer(data, work / "tokenizer"))
    check_identity(state["identity"], identity, keys, str(resume), "; use a new output_dir to change it")
    return resume, state


def recipe_values(data: DataConfig, cfg: TrainConfig) -> dict:
    """Every recipe value, JSON-normalised as a checkpoint stores it."""
    return json.loads(json.dumps(dataclasses.asdict(data) | dataclasses.asdict(cfg)))


def check_recipe_unchanged(state: dict, data: DataConfig, cfg: TrainConfig, resume: Path) -> None:
    """One line naming every key that differs from the checkpoint's recipe (old -> new)."""
    saved, now = state.get("recipe"), recipe_values(data, cfg)
    if saved is None:  # a checkpoint from before recipes were recorded: only its identity was checked
        return
    changed = [
        f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v
    ]
    if changed:
        raise UserError(
            f"{resume}: the recipe differs from the run it resumes ({'; '.join(changed)}); restore those values, "
            "or pass --start_over to train from step 0 (its checkpoints are deleted)"
        )


def log_up_to(path: Path, step: int) -> list[dict]:
    """The log entries up to `step` (the run's start), with the file cut back to them: the run replays the
    lines after its checkpoint (and drops one a kill cut short, which has no newline); a run that starts
    afresh drops every line of an attempt that died before its first checkpoint."""
    history, keep = [], 0
    if path.is_file():
        for line in path.read_bytes().split(b"\n")[:-1]:
            entry = json.loads(line)
            if entry["step"] > step:
                break
            history.append(entry)
            keep += len(line) + 1
        os.truncate(path, keep)
    return history


def replica_checksums(accelerator: Accelerator, model) -> list[float] | None:
    """DDP replicas must hold the same weights: one checksum per rank, gathered for the record."""
    if accelerator.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        return None
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    return accelerator.gather(checksum).tolist()


def train(data: DataConfig, cfg: TrainConfig) -> Path:
    """Tokenize if needed, train (resuming from the newest checkpoint), save the final checkpoint to output_dir.
    Three parts, each readable alone: `setup` (checks, files, model, optimizer, schedule, resume), `train_loop`
    (the steps, their log lines and checkpoints), `save_final` (the model and the run's record, renamed into place)."""
    run = setup(data, cfg)
    wall = train_loop(run)
    save_final(run, wall)
    return Path(cfg.output_dir)


@dataclass
class Run:
    """What `setup` makes and the loop and the checkpoints use."""

    data: DataConfig
    cfg: TrainConfig
    accelerator: Accelerator
    work: Path
    tokenizer: object
    identity: dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: PackedLoader
    curriculum: Curriculum
    names: list[str]
    plan: dict
    decay_start: int | None
    start: int
    accum: int
    tokens_per_step: int
    source_tokens: np.ndarray  # per source, summed over ranks; updated in place at each log or save step
    history: list[dict]
    n_params: int
    fpt: float
    peak: float | None

    @property
    def max_steps(self) -> int:
        return self.plan["max_steps"]

    def trainer_state(self, step: int) -> dict:
        """What a checkpoint records besides the accelerate state: enough to resume and to check a resume."""
        return {
            "step": step, "plan": self.plan, "identity": self.identity, "recipe": recipe_values(self.data, self.cfg),
            "decay_from_step": self.decay_start,
            "stage": self.data.stage_list[self.curriculum.stage_at(max(step - 1, 0))].name,
            "tokens": step * self.tokens_per_step, "source_tokens": dict(zip(self.names, self.source_tokens.tolist())),
        }


def make_accelerator(cfg: TrainConfig, work: Path) -> Accelerator:
    trackers = [t.strip() for t in cfg.report_to.split(",") if t.strip() not in ("", "none")]
    return Accelerator(
        # accelerate detects torchrun's ranks on CPU only when told it is on CPU (then: gloo DDP)
        cpu=not torch.accelerator.is_available(), mixed_precision=cfg.mixed_precision, log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(work), logging_dir=str(work / "runs")),
    )


def setup(data: DataConfig, cfg: TrainConfig) -> Run:
    """Setup: every check first (`check_run`: nothing is written until they pass), then the tokenizer and token
    files, then the model, optimizer, schedule and loader, at the step of the checkpoint this run starts from. The
    order of the seeded calls (init, set_seed, prepare, load_state) is what makes a seed give the same losses."""
    work = work_dir_of(cfg.output_dir)
    accelerator = make_accelerator(cfg, work)
    log = print if accelerator.is_main_process else (lambda *_: None)
    decay_source, accum, tokens_per_step, resume, state = check_run(data, cfg, accelerator.num_processes)
    # Validation is over: from here on files are written (into <output_dir>.partial only).
    tokenizer, identity, files = prepare_inputs(data, cfg, accelerator, work, tokens_per_step, decay_source, log)
    model, optimizer, n_params = make_model_and_optimizer(cfg, accelerator, tokenizer)
    names = [s.name for s in data.source_list]
    decay_start = state["decay_from_step"] if state else (decay_source["step"] if decay_source else None)
    curriculum = Curriculum(data.stage_list, names, tokens_per_step, decay_start=decay_start)
    plan = state["plan"] if state else make_plan(cfg, curriculum, decay_source)
    # Where this run starts: its own newest checkpoint, else the decay_from checkpoint, else step 0.
    origin, origin_path = (state, resume) if state else (decay_source, cfg.decay_from)
    start = origin["step"] if origin else 0
    if origin:
        accelerator.load_state(str(origin_path))
        log(f"resuming from {origin_path} at step {start}")
    run = Run(
        data=data, cfg=cfg, accelerator=accelerator, work=work, tokenizer=tokenizer, identity=identity, model=model,
        optimizer=optimizer, scheduler=make_scheduler(optimizer, cfg, plan, last_epoch=start - 1),
        loader=PackedLoader(files, curriculum, data.seq_len, cfg.micro_batch_size, cfg.seed, accelerator.process_index),
        curriculum=curriculum, names=names, plan=plan, decay_start=decay_start, start=start, accum=accum,
        tokens_per_step=tokens_per_step,
        source_tokens=np.array([origin["source_tokens"][n] if origin else 0 for n in names], dtype=np.int64),
        history=log_up_to(work / "log_history.jsonl", start) if accelerator.is_main_process else [],
        n_params=n_params, fpt=flops_per_token(accelerator.unwrap_model(model).config, n_params, data.seq_len),
        peak=peak_flops(cfg),
    )
    if accelerator.is_main_process:
        scalars = {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (int, float, str, bool))}
        named = {tracker: {"name": cfg.run_name} for tracker in ("trackio", "wandb")}  # their init's run name
        accelerator.init_trackers(cfg.project, scalars, init_kwargs=named)
        log(f"{cfg.model}: {n_params:,} parameters; {run.max_steps} steps x {tokens_per_step:,} tokens "
            f"({accelerator.num_processes} process(es), accumulation {accum})")
    return run


def check_run(data: DataConfig, cfg: TrainConfig, world: int) -> tuple:
    """Every check before a file is written: output_dir free, `decay_from` a checkpoint, the batch shape, the
    inputs, and a resumed run's recipe unchanged. Returns the decay_from state, the accumulation steps, the tokens
    per step, and the checkpoint to resume from with its state (None, None: none, or `--start_over`)."""
    out = Path(cfg.output_dir)
    if out.exists():
        raise UserError(f"{out}: recipe key 'output_dir' holds a finished run; choose another output_dir")
    decay_source = read_checkpoint_state(Path(cfg.decay_from), "decay_from") if cfg.decay_from else None
    accum, tokens_per_step = batch_shape(cfg, data.seq_len, world)
    check_inputs(data)
    resume, state = (None, None) if cfg.start_over else check_resume(data, cfg, tokens_per_step)
    if state:
        check_recipe_unchanged(state, data, cfg, resume)
    return decay_source, accum, tokens_per_step, resume, state


def prepare_inputs(data: DataConfig, cfg: TrainConfig, accelerator: Accelerator, work: Path, tokens_per_step: int,
                   decay_source: dict | None, log) -> tuple:
    """The files a run writes before training: the tokenizer and token files (made by the main process first),
    with `--start_over`'s checkpoints deleted and an interrupted save's removed. Returns the tokenizer, the run's
    identity (checked against `decay_from`'s, which needs the tokenizer) and the open token files."""
    main = accelerator.is_main_process
    if cfg.start_over and main:
        shutil.rmtree(work / "checkpoints", ignore_errors=True)  # the log is cut back to step 0 in `setup`
    with accelerator.main_process_first():
        tokenizer = prepare(data, work, log)
        work.mkdir(parents=True, exist_ok=True)
    identity = run_identity(data, cfg, tokens_per_step, tokenizer)
    if decay_source:  # needs the tokenizer, so it comes after prepare: only a new run's own files are written
        check_identity(decay_source["identity"], identity, DECAY_KEYS, f"{cfg.decay_from}: recipe key 'decay_from'")
    files = open_sources(data_dir_of(data, work), data.source_list, data.seq_len)
    if main:
        for stale in (work / "checkpoints").glob("tmp-step-*"):  # a save interrupted by a kill
            shutil.rmtree(stale)
    return tokenizer, identity, files


def make_model_and_optimizer(cfg: TrainConfig, accelerator: Accelerator, tokenizer) -> tuple:
    """The model from random init (same on every rank: seeded before `set_seed` makes the rest per rank) and its
    AdamW, both prepared by accelerate; with the parameter count."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    model = build_model(cfg, tokenizer)
    set_seed(cfg.seed, device_specific=True)  # after init: any other randomness differs per rank
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
        # fused: one kernel for every parameter; on the tiny model's CPU step 1.0 ms vs 4.0 (for-loop) or 4.3 (foreach)
        eps=cfg.adam_epsilon, fused=accelerator.device.type in ("cuda", "cpu"),
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, n_params


def train_loop(run: Run) -> float:
    """The loop from the start step to max_steps: a log line every `logging_steps`, a checkpoint every `save_steps`.
    Per-source token counts are summed over ranks only at those steps (the only collectives besides the
    gradients'). Returns the loop's wall time."""
    cfg, accelerator = run.cfg, run.accelerator
    run.model.train()
    bar = tqdm(total=run.max_steps, initial=run.start, disable=not accelerator.is_main_process, dynamic_ncols=True)
    pending = np.zeros(len(run.names), dtype=np.int64)  # this rank's tokens per source since the last sync
    meter, run_start = Meter(accelerator.device), time.perf_counter()
    for step in range(run.start, run.max_steps):
        lr = optimizer_step(run, step, meter, pending)
        done, meter.steps = step + 1, meter.steps + 1
        bar.update(1)
        logging = done % cfg.logging_steps == 0 or done == run.max_steps
        saving = cfg.save_steps and done % cfg.save_steps == 0
        if logging or saving:
            synced = accelerator.reduce(torch.from_numpy(pending).to(accelerator.device), "sum")
            run.source_tokens += synced.cpu().numpy()
            pending[:] = 0
        if logging:
            log_step(run, step, lr, meter, bar)
        if saving:
            save_checkpoint(accelerator, run.work / "checkpoints", run.trainer_state(done), cfg.keep_last)
    bar.close()
    return time.perf_counter() - run_start


def optimizer_step(run: Run, step: int, meter: Meter, pending: np.ndarray) -> float:
    """One optimizer step over `accum` micro-batches (gradients synced on the last only); the learning rate used.
    Each micro-batch's loss is added to the meter and its tokens per source to `pending`."""
    accelerator, model = run.accelerator, run.model
    for micro in range(run.accum):
        batch, counts = run.loader.batch(step, micro)
        pending += counts
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
        with accelerator.no_sync(model) if micro < run.accum - 1 else contextlib.nullcontext():
            loss = model(**batch, use_cache=False).loss / run.accum
            accelerator.backward(loss)
        meter.loss += loss.detach()
    if run.cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), run.cfg.max_grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr


def log_step(run: Run, step: int, lr: float, meter: Meter, bar) -> None:
    """One log entry: to the history, the trackers and (main process) log_history.jsonl and the progress bar."""
    done, accelerator = step + 1, run.accelerator
    loss_value, tps = meter.read(accelerator, run.tokens_per_step)
    entry = {
        "step": done, "loss": round(loss_value, 6), "lr": lr, "tokens": done * run.tokens_per_step,
        "stage": run.data.stage_list[run.curriculum.stage_at(step)].name,
        **throughput(tps, run.fpt, run.peak, accelerator.num_processes),
        "source_tokens": dict(zip(run.names, run.source_tokens.tolist())),
    }
    run.history.append(entry)
    accelerator.log({k: v for k, v in entry.items() if isinstance(v, (int, float))}
                    | {f"tokens_{n}": t for n, t in entry["source_tokens"].items()}, step=done)
    if accelerator.is_main_process:
        with open(run.work / "log_history.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", stage=entry["stage"])


def save_final(run: Run, wall: float) -> None:
    """The final checkpoint: model, tokenizer, pretrain_state.json (the last trainer state, throughput, replica
    checksums, the whole config) and log_history.json into the work directory, then its rename to output_dir."""
    accelerator, max_steps = run.accelerator, run.max_steps
    replicas = replica_checksums(accelerator, run.model)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(run.model)
    if accelerator.is_main_process:
        work, out = run.work, Path(run.cfg.output_dir)
        final = accelerator.unwrap_model(run.model)
        final.config.use_cache = True
        final.save_pretrained(work, state_dict=state_dict)
        run.tokenizer.save_pretrained(work)
        tokens_per_s = (max_steps - run.start) * run.tokens_per_step / max(wall, 1e-9)
        summary = run.trainer_state(max_steps) | {
            "parameters": run.n_params, "world_size": accelerator.num_processes, "wall_s": round(wall, 2),
            **throughput(tokens_per_s, run.fpt, run.peak, accelerator.num_processes),
            "flops_per_token": run.fpt, "replica_param_checksums": replicas,
            "config": dataclasses.asdict(run.data) | dataclasses.asdict(run.cfg),
        }
        write_json(work / "pretrain_state.json", summary)
        write_json(work / "log_history.json", run.history)
        (work / "log_history.jsonl").unlink()
        os.replace(work, out)
        print(f"saved {out} ({max_steps} steps, {summary['tokens']:,} tokens, {summary['tokens_per_s']:,.0f} tokens/s)")
    accelerator.end_training()


def main(argv: list[str]) -> int:
    from common.recipe import help_requested, parse_recipe

    if help_requested(argv, [DataConfig, TrainConfig], "pretrain train"):
        return 0
    data, cfg = parse_recipe([DataConfig, TrainConfig], argv)
    train(data, cfg)
    return 0
