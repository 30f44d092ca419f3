"""SFT packing and the cost of the posttrain layer, on the tiny model (not a test: prints figures).

    python bench/sft_packing.py [--model DIR] [--rows 2048] [--steps 20] [--rounds 3] [--batch 64]

1. Non-padding token fraction of real collated batches from SFTTrainer: BFD packing (padding-free, one flattened
   row per batch) vs TRL's default padding to the longest row; plus how full BFD fills its `max_length` bins.
2. Rows per second of the same SFT step with BFD packing (padding-free) vs padding, one change at a time.
3. Seconds per step of `posttrain sft` (`posttrain.sft.build`: recipe parsing, CPU defaults, data adapters,
   overlong-row checks) vs the same SFTTrainer configured by hand on the same rows, same seed; the two are timed
   in alternating rounds and each side's fastest round is compared, so load from other processes on a shared
   machine inflates neither. The ratio should be ~1: the layer adds no per-step work.

Without --model a random-init `tiny` model with a 1,024-token BPE (generated web text + task documents) is built
in a temporary directory. The last line printed is one JSON object with every figure.
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
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import ModelConfig, SFTConfig, SFTTrainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posttrain import data, sft, stage  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.stamps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(time.perf_counter())

    def per_step(self) -> float:
        """Median seconds per step, the first step (warm-up) left out."""
        return statistics.median(b - a for a, b in zip(self.stamps[1:], self.stamps[2:]))


def tiny_model(directory: Path) -> Path:
    from posttrain import task
    from pretrain.corpus import web_documents
    from pretrain.presets import model_config
    from pretrain.tokenizer import train_bpe

    tok = train_bpe([], 1024, directory, texts=web_documents(3000) + task.pretraining_documents(3000))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(model_config("tiny", tokenizer=tok)).save_pretrained(directory)
    return directory


def nonpad_fraction(trainer, pad_id: int) -> dict:
    """Over 5 collated batches: real tokens / tensor cells; for packed batches also tokens / (bins x max_length)."""
    real = cells = docs = 0
    loader = iter(trainer.get_train_dataloader())
    for _ in range(5):
        batch = next(loader)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real += int(mask.sum()) if mask is not None else int((ids != pad_id).sum())
        cells += ids.numel()
        docs += int((batch["position_ids"] == 0).sum()) if "position_ids" in batch else ids.shape[0]
    return {"fraction": real / cells, "tokens_per_batch": cells / 5, "rows_per_batch": docs / 5}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint dir (default: a random-init tiny model)")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=512)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sft_packing_"))
    model_dir = Path(args.model) if args.model else tiny_model(work / "model")
    recipe = {
        "model_name_or_path": str(model_dir),
        "datasets": [{"name": "arithmetic", "split": "train", "rows": args.rows, "levels": [1, 2, 3]}],
        "no_think_fraction": 0.5, "max_length": args.max_length, "per_device_train_batch_size": args.batch,
        "learning_rate": 3e-3, "logging_steps": 1000, "save_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "seed": 0,
    }
    (work / "sft.yaml").write_text(yaml.safe_dump(recipe))

    def posttrain_trainer(steps: int, out: str, **overrides):
        argv = ["--config", str(work / "sft.yaml"), "--output_dir", str(work / out), "--max_steps", str(steps)]
        for key, value in overrides.items():
            argv += [f"--{key}", str(value)]
        parsed = stage.parse_args((sft.SFTScriptArguments, SFTConfig, ModelConfig), argv, "bench", sft.SFT_DEFAULTS)
        return sft.build("sft", *parsed).trainer

    # 1. padding vs BFD packing: the same rows, collated by the real SFTTrainer (~as many rows per packed batch)
    packed_batch = max(1, args.batch // 8)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    padded = nonpad_fraction(posttrain_trainer(1, "pad"), tokenizer.pad_token_id)
    packed_trainer = posttrain_trainer(1, "pack", packing="true", per_device_train_batch_size=packed_batch)
    packed = nonpad_fraction(packed_trainer, tokenizer.pad_token_id)
    bins = packed_trainer.train_dataset
    bin_fill = sum(sum(s) for s in bins["seq_lengths"]) / (len(bins) * args.max_length)

    # 2. and 3. step times, alternating: posttrain sft padded, the same SFTTrainer by hand, posttrain sft packed
    rows = data.load_conversations(recipe["datasets"], no_think_fraction=0.5, seed=0)

    def by_hand(steps: int):
        config = SFTConfig(
            output_dir=str(work / "hand"), max_steps=steps, per_device_train_batch_size=args.batch,
            learning_rate=3e-3, max_length=args.max_length, assistant_only_loss=True, bf16=False,
            activation_checkpointing=False, dataloader_pin_memory=False, logging_steps=1000, save_strategy="no",
            report_to="none", disable_tqdm=True, seed=0,
        )
        return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=config, train_dataset=rows,
                          processing_class=AutoTokenizer.from_pretrained(model_dir))

    makers = {
        "posttrain": lambda: posttrain_trainer(args.steps, "time"),
        "trl": lambda: by_hand(args.steps),
        "packed": lambda: posttrain_trainer(args.steps, "time", packing="true",
                                            per_device_train_batch_size=packed_batch),
    }
    times = {name: [] for name in makers}
    for round_ in range(args.rounds):
        for name, make in makers.items():
            trainer = make()
            timer = StepTimer()
            trainer.add_callback(timer)
            trainer.train()
            times[name].append(timer.per_step())
            print(f"round {round_} {name}: {times[name][-1]:.3f} s/step", file=sys.stderr)
    posttrain_s, trl_s = min(times["posttrain"]), min(times["trl"])
    print(json.dumps({
        "packed_nonpad_fraction": round(packed["fraction"], 4),
        "padded_nonpad_fraction": round(padded["fraction"], 4),
        "packed_bin_fill": round(bin_fill, 4),
        "packed_tokens_per_batch": packed["tokens_per_batch"], "packed_rows_per_batch": packed["rows_per_batch"],
        "padded_tokens_per_batch": padded["tokens_per_batch"], "padded_rows_per_batch": padded["rows_per_batch"],
        "padded_rows_per_s": round(padded["rows_per_batch"] / posttrain_s, 1),
        "packed_rows_per_s": round(packed["rows_per_batch"] / min(times["packed"]), 1),
        "posttrain_s_per_step": round(posttrain_s, 4), "trl_s_per_step": round(trl_s, 4),
        "posttrain_vs_trl_step_time_ratio": round(posttrain_s / trl_s, 4),
        "rounds_s_per_step": times, "batch": args.batch, "steps_per_round": args.steps,
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
