"""`posttrain <command> --config recipe.yaml [--key value ...]`: one command per stage.

Each command lives in its own module and is imported only when called, so `posttrain --help` is instant.
Every command also runs under `accelerate launch -m posttrain <command> ...`.
"""

from __future__ import annotations

import importlib
import sys

from common.errors import run_cli

COMMANDS = {
    "midtrain": ("posttrain.midtrain", "continued pretraining on distilled reasoning traces (packed)"),
    "sft": ("posttrain.sft", "supervised fine-tuning, assistant-only loss, /think + /no_think mixture"),
    "pairs": ("posttrain.pairs", "DPO pairs from a checkpoint's own mode violations (loops, broken formats)"),
    "route": ("posttrain.route", "/auto_think SFT rows: think where the checkpoint's direct answer is wrong"),
    "dpo": ("posttrain.dpo", "preference optimization (DPO / APO) at ~0.1x the SFT learning rate"),
    "rlvr": ("posttrain.rlvr", "GRPO with verifiable rewards and length penalties"),
    "serve": ("posttrain.serve", "vLLM rollout server for `rlvr` (vllm_mode: server)"),
    "eval": ("posttrain.evaluate", "accuracy, mode adherence and length per mode for a checkpoint"),
    "ablate": ("posttrain.ablate", "one change at a time over seeds: arms vs a baseline, paired intervals, verdicts"),
    "merge": ("posttrain.merge", "linear merge (model soup) of checkpoints"),
    "pipeline": ("posttrain.pipeline", "the whole recipe: pretrain -> midtrain -> sft -> dpo -> rlvr, with evals"),
    "check-template": ("posttrain.template_checks", "validate a chat template / tokenizer for hybrid training"),
}


def usage() -> str:
    lines = ["usage: posttrain <command> [--config recipe.yaml] [--key value ...] [--debug]", "", "commands:"]
    lines += [f"  {name:<15} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


@run_cli
def main(argv):
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from common.errors import UserError

        raise UserError(f"unknown command {name!r} (commands: {', '.join(COMMANDS)}; see posttrain --help)")
    module = importlib.import_module(COMMANDS[name][0])
    code = module.main(rest)
    sys.exit(code or 0)
