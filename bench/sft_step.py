"""`posttrain sft`'s training step against a bare eager PyTorch loop, and the CPU levers one at a time (not a test:
prints figures).

    python bench/sft_step.py [--model DIR] [--rows 2048] [--steps 12] [--rounds 3] [--levers a,b,...]

The bare loop trains a fresh copy of the same model on batches pre-collated by the same trainer (same rows, order
and padding): forward with labels (the model's own loss), backward, grad-norm clipping at 1.0, torch AdamW, nothing
else. `posttrain` runs the real stage (recipe parsing, data adapters, TRL's SFTTrainer, collation every step) with
recipes/tiny/sft.yaml's data, batch and learning rate and the stage's defaults; each lever is one change to that;
`tiny_recipe` is what recipes/tiny/sft.yaml ships (`token_metrics: false`, `bf16: auto`, `attn_implementation:
auto`, i.e. eager where bf16 autocasts, and each step's rows in two micro-batches split by length,
`batch_rebalance`: the same number of rows per step as the bare loop's random batches, with less padding, which the
bare loop does not get); `tiny_recipe_sdpa` is the same with sdpa attention. Variants are timed in alternating
rounds and each one's fastest round (median seconds per step, first step left out) is kept, so load from other
processes inflates none of them. `vs_bare` = bare seconds per step / the variant's: above 1.0 the variant trains
faster than the hand-written loop. `collate_s` is what the trainer's dataloader takes per batch, a cost the bare
loop does not pay.

Without --model a random-init `tiny` model with a 1,024-token BPE is built in a temporary directory. The last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from sft_packing import StepTimer, tiny_model
from transformers import AutoModelForCausalLM
from trl import ModelConfig, SFTConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posttrain import sft, stage  # noqa: E402


def levers(batch: int) -> dict[str, dict[str, str]]:
    """One change each against the stage's defaults (TRL's SFTTrainer as it comes), then recipes/tiny/sft.yaml's
    settings whole and with sdpa instead of eager attention, for steps of `batch` rows."""
    rebalance = {"per_device_train_batch_size": str(batch // 2), "gradient_accumulation_steps": "2",
                 "train_sampling_strategy": "batch_rebalance"}  # the same rows per step, split by length
    recipe = {"token_metrics": "false", "bf16": "auto", "attn_implementation": "auto", **rebalance}
    return {
        "token_metrics_off": {"token_metrics": "false"},
        "bf16_autocast": {"bf16": "true"},
        "torch_compile": {"torch_compile": "true"},
        "adamw_for_loop": {"optim": "adamw_torch"},  # TRL's default is adamw_torch_fused
        "dataloader_workers_1": {"dataloader_num_workers": "1"},
        "batch_rebalance": rebalance,
        "eager_attention": {"attn_implementation": "eager"},
        "tiny_recipe": recipe,
        "tiny_recipe_sdpa": recipe | {"attn_implementation": "sdpa"},  # `auto` picks eager under CPU bf16 autocast
    }


def bare_loop(model_dir: str, batches: list[dict], lr: float) -> float:
    """Median seconds per step of a hand-written loop over pre-collated batches (first step left out)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    times = []
    for batch in batches:
        start = time.perf_counter()
        model(**batch, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint dir (default: a random-init tiny model)")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    parser.add_argument("--batch", type=int, default=64)
    known = ", ".join(levers(64))
    parser.add_argument("--levers", default=known.replace(" ", ""), help=f"comma-separated, of: {known}")
    args = parser.parse_args()
    chosen = [name for name in args.levers.split(",") if name]
    unknown = [name for name in chosen if name not in levers(args.batch)]
    if unknown:
        parser.error(f"--levers: unknown lever {unknown[0]!r} (known: {known})")
    work = Path(tempfile.mkdtemp(prefix="sft_step_"))
    model_dir = args.model or str(tiny_model(work / "model"))
    # recipes/tiny/sft.yaml's settings (its rows, instructions, batch and learning rate)
    recipe = {
        "model_name_or_path": model_dir,
        "datasets": [{"name": "arithmetic", "split": "train", "rows": args.rows, "levels": [1, 2, 3], "seed": 1}],
        "default_instructions": {"think": "Think step by step in <think> tags, then answer.",
                                 "no_think": "Answer directly."},
        "no_think_fraction": 0.5, "max_length": 256, "per_device_train_batch_size": args.batch,
        "learning_rate": 3e-3, "logging_steps": 10, "save_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "seed": 0,
    }
    (work / "sft.yaml").write_text(yaml.safe_dump(recipe))

    def trainer(steps: int, **overrides):
        argv = ["--config", str(work / "sft.yaml"), "--output_dir", str(work / "run"), "--max_steps", str(steps)]
        for key, value in overrides.items():
            argv += [f"--{key}", value]
        parsed = stage.parse_args((sft.SFTScriptArguments, SFTConfig, ModelConfig), argv, "bench", sft.SFT_DEFAULTS)
        return sft.build("sft", *parsed).trainer

    def timed(**overrides) -> float:
        run = trainer(args.steps + 1, **overrides)
        timer = StepTimer()
        run.add_callback(timer)
        run.train()
        return timer.per_step()

    loader = iter(trainer(1).get_train_dataloader())
    start = time.perf_counter()
    batches = [next(loader) for _ in range(args.steps + 1)]
    collate_s = (time.perf_counter() - start) / len(batches)
    variants = {"bare": lambda: bare_loop(model_dir, batches, recipe["learning_rate"]), "posttrain": timed}
    for name in chosen:
        variants[name] = lambda overrides=levers(args.batch)[name]: timed(**overrides)
    rounds = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, run in variants.items():
            rounds[name].append(round(run(), 4))
            print(f"round {round_} {name}: {rounds[name][-1]:.3f} s/step", file=sys.stderr)
    best = {name: min(times) for name, times in rounds.items()}
    print(json.dumps({
        "s_per_step": best,
        "vs_bare": {name: round(best["bare"] / s, 3) for name, s in best.items()},
        "vs_posttrain_default": {name: round(best["posttrain"] / s, 3) for name, s in best.items()},
        "collate_s": round(collate_s, 4), "rounds_s_per_step": rounds, "batch": args.batch,
        "steps_per_round": args.steps,
        "tokens_per_batch": int(batches[0]["input_ids"].numel()), "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
