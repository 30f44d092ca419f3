"""`pretrain tokenizer | tokenize | train | tokenizer-eval`.

    pretrain tokenizer --files a.txt b.txt --vocab_size 1024 --output DIR   # byte-level BPE
    pretrain tokenizer --llama3 --output DIR                                # the SmolLM3 (Llama-3) tokenizer
    pretrain tokenize --config recipe.yaml [--key value ...]                # token files only
    pretrain train --config recipe.yaml [--key value ...]                   # tokenizes first when needed
    pretrain tokenizer-eval DIR --data TEXTS [--json out.json]              # fertility per language

`train` also runs as `accelerate launch -m pretrain.cli train ...` or `torchrun -m pretrain.cli train ...`.
"""

from __future__ import annotations

import argparse
import sys

from common.errors import UserError, run_cli

COMMANDS = {
    "tokenizer": "train a byte-level BPE (or build the Llama-3 tokenizer) with the hybrid chat template",
    "tokenize": "turn the recipe's sources into token files (skips fresh ones)",
    "train": "pretrain from random init (resumes from the newest checkpoint)",
    "tokenizer-eval": "fertility and continued-word share per language on UDHR texts",
}


def usage() -> str:
    lines = ["usage: pretrain <command> [options] [--debug]", "", "commands:"]
    return "\n".join(lines + [f"  {name:<15} {doc}" for name, doc in COMMANDS.items()])


def tokenizer_command(argv: list[str]) -> None:
    from pretrain.tokenizer import build_llama3, train_bpe

    parser = argparse.ArgumentParser(prog="pretrain tokenizer", description=COMMANDS["tokenizer"])
    parser.add_argument("--files", nargs="+", default=[], help="training text files (BPE)")
    parser.add_argument("--vocab_size", type=int, default=1024, help="BPE vocabulary size")
    parser.add_argument("--llama3", action="store_true", help="build the 128,256-token Llama-3 tokenizer instead")
    parser.add_argument("--output", required=True, help="tokenizer directory to write")
    args = parser.parse_args(argv)
    if args.llama3:
        tok = build_llama3(args.output)
    elif not args.files:
        raise UserError("pretrain tokenizer: give --files (BPE training text) or --llama3")
    else:
        tok = train_bpe(args.files, args.vocab_size, args.output)
    print(f"saved a {len(tok):,}-token tokenizer to {args.output}")


def tokenize_command(argv: list[str]) -> None:
    from pathlib import Path

    from common.recipe import help_requested, parse_recipe
    from pretrain.data import DataConfig, check_inputs, prepare
    from pretrain.train import TOKENIZE_KEYS, TrainConfig, check_resume, work_dir_of

    if help_requested(argv, [DataConfig, TrainConfig], "pretrain tokenize"):
        return
    data, cfg = parse_recipe([DataConfig, TrainConfig], argv)
    if Path(cfg.output_dir).exists():
        raise UserError(f"{cfg.output_dir}: recipe key 'output_dir' holds a finished run; choose another output_dir")
    check_inputs(data)
    check_resume(data, cfg, tokens_per_step=None, keys=TOKENIZE_KEYS)  # the world size is the run's
    prepare(data, work_dir_of(cfg.output_dir))


@run_cli
def main(argv):
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "tokenizer":
        tokenizer_command(rest)
    elif name == "tokenize":
        tokenize_command(rest)
    elif name == "train":
        from pretrain.train import main as train_main

        train_main(rest)
    elif name == "tokenizer-eval":
        from pretrain.tokenizer_eval import main as eval_main

        eval_main(rest)
    else:
        raise UserError(f"unknown command {name!r}\n{usage()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
