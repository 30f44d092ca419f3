"""Benchmark the pretraining loader (run from the repo root; ~1-2 minutes on 2 cores):

    python bench/pretrain_loader.py [--steps 300] [--train_steps 20]

Prints JSON; the last line is one object with at least `loader_tokens_per_s`, `deep_vs_start_ratio` (the
loader at an offset >= 10^6 samples into the run vs at its start: it must not slow down as the step count
grows) and `vs_datasets_ratio` (against a plain `datasets` + torch `DataLoader` serving the same batches:
the same tokens, position_ids and labels, precomputed as columns), plus the tiny recipe's training tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RECIPE = "recipes/tiny/pretrain.yaml"  # its rows (seq_len x micro_batch_size) are the loader's too


def best_rate(fn, repeats: int = 5) -> float:
    """Tokens/s of the best of `repeats` runs: the machine is shared, the best run is the least disturbed."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        rates.append(tokens / (time.perf_counter() - start))
    return max(rates)


def main() -> None:
    from datasets import Dataset
    from torch.utils.data import DataLoader

    from common.recipe import parse_recipe
    from pretrain.corpus import web_documents
    from pretrain.data import CorpusSource, Curriculum, DataConfig, PackedLoader, Stage, open_sources, tokenize
    from pretrain.tokenizer import train_bpe
    from pretrain.train import TrainConfig, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="batches per loader measurement")
    parser.add_argument("--train_steps", type=int, default=20, help="tiny recipe steps for training tokens/s")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, cfg = parse_recipe(
            [DataConfig, TrainConfig],
            ["--config", RECIPE, "--output_dir", str(tmp / "run"), "--max_steps", str(args.train_steps),
             "--warmup_steps", "2", "--save_steps", "0", "--logging_steps", str(args.train_steps)],
        )
        seq_len, micro = data.seq_len, cfg.micro_batch_size
        web = {"n": 3000, "seed": 0}  # the tiny recipe's generated web text (~1 MB)
        tokenizer = train_bpe([], 1024, tmp / "tokenizer", texts=web_documents(**web))
        source = CorpusSource("web", "generator", generator="web", kwargs=web)
        tokenize([source], tokenizer, tmp / "tokens", np.dtype("uint16"), log=lambda *_: None)
        files = open_sources(tmp / "tokens", [source], seq_len)
        curriculum = Curriculum([Stage("s", 10**15, {"web": 1.0})], ["web"], seq_len * micro)
        loader = PackedLoader(files, curriculum, seq_len, micro, seed=0)
        deep_step = 10**6 // micro + 1  # >= 10^6 samples into the run

        def ours(first_step):
            for step in range(first_step, first_step + args.steps):
                loader.batch(step)
            return args.steps * micro * seq_len

        start_rate, deep_rate = best_rate(lambda: ours(0)), best_rate(lambda: ours(deep_step))

        # The baseline: the same tokens cut into consecutive rows, stored in a datasets.Dataset in torch format
        # (with the same position_ids and labels precomputed as columns: the same batches, no per-batch work),
        # read by a shuffling torch DataLoader. Also timed with input_ids alone.
        offsets = np.arange(0, len(files[0]) - seq_len + 1, seq_len)
        ids, positions = files[0].windows(offsets, seq_len)
        labels = np.where(positions == 0, -100, ids)
        columns = {"input_ids": ids.astype(np.int64), "position_ids": positions, "labels": labels}

        def baseline(dataset):
            dataloader = DataLoader(dataset.with_format("torch"), batch_size=micro, shuffle=True,
                                    generator=torch.Generator().manual_seed(0))
            seen = 0
            while seen < args.steps:
                for _ in dataloader:
                    seen += 1
                    if seen == args.steps:
                        break
            return args.steps * micro * seq_len

        datasets_rate = best_rate(lambda: baseline(Dataset.from_dict(columns)))
        datasets_ids_rate = best_rate(lambda: baseline(Dataset.from_dict({"input_ids": columns["input_ids"]})))

        train(data, cfg)
        train_rate = json.loads((tmp / "run" / "pretrain_state.json").read_text())["tokens_per_s"]

    print(json.dumps({
        "seq_len": seq_len, "micro_batch_size": micro, "steps": args.steps, "deep_step": deep_step,
        "train_torch_threads": torch.get_num_threads(), "load_average_1m": round(os.getloadavg()[0], 2),
        "loader_tokens_per_s": round(start_rate), "loader_deep_tokens_per_s": round(deep_rate),
        "deep_vs_start_ratio": round(deep_rate / start_rate, 3),
        "datasets_tokens_per_s": round(datasets_rate), "vs_datasets_ratio": round(start_rate / datasets_rate, 2),
        "datasets_input_ids_only_tokens_per_s": round(datasets_ids_rate),
        "vs_datasets_input_ids_only_ratio": round(start_rate / datasets_ids_rate, 2),
        "tiny_train_tokens_per_s": train_rate,
    }))


if __name__ == "__main__":
    main()
