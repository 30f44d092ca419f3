"""`posttrain pairs --config recipe.yaml`: DPO pairs from the mode violations in a checkpoint's own answers.

SFT shows a model what to write, never what not to: a small model trained on /think traces can loop, its think
block still open when the token budget ends (SmolLM2-135M after recipes/smollm2-135m/sft.yaml: 26% of unseen
GSM8K questions, greedy). This command asks the checkpoint each question of a conversation source in its mode,
scores the answers with the format reward `posttrain eval` uses, and writes each answer that breaks its mode
as the rejected side of a pair whose chosen side is the data's own answer. The rejected answer keeps the data's
final answer where it never reached one, so a pair differs only where the model went wrong. `posttrain dpo`
reads the file as `{name: preferences, path: ...}` (recipes/smollm2-135m/dpo.yaml).

Ask questions the SFT did not train on: on its own training rows a model loops less than on new ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.outputs import write_text_atomic
from common.recipe import help_requested, parse_recipe
from common.template import THINK_CLOSE, THINK_OPEN, mode_system_message
from posttrain import evaluate

logger = logging.getLogger("posttrain")


@dataclass
class AskArguments(evaluate.GenerationArguments):
    """The keys of a command that asks a checkpoint the questions of conversation sources and writes jsonl rows
    from its answers (`posttrain pairs`, `posttrain route`); generation keys as in `posttrain eval`."""

    output: str = field(default="", metadata={"help": "The rows file to write (jsonl; replaced atomically)."})
    datasets: list[dict] = field(
        default_factory=lambda: [{"name": "arithmetic", "split": "train", "rows": 100}],
        metadata={"help": "Conversation sources (posttrain.data: arithmetic, gsm8k, messages) whose last "
                  "assistant turn (with its reasoning) is the data's answer to the question before it."},
    )


def parse_ask(argv, arguments: type, command: str):
    """The recipe of an `AskArguments` command, its output named and its checkpoint checked; None for --help."""
    if help_requested(argv, [arguments], command):
        return None
    (args,) = parse_recipe([arguments], argv)
    if not args.output:
        raise UserError("missing required recipe key 'output' (the rows file to write)")
    evaluate.check_checkpoint(args.model_name_or_path)
    return args


def ask(args: AskArguments, prompts: list[dict]) -> dict:
    """`evaluate.evaluate` on prompt rows with the recipe's generation keys, every sample kept."""
    from datasets import Dataset

    from posttrain import data

    return evaluate.evaluate(args.model_name_or_path, Dataset.from_list(prompts, features=data.PROMPT),
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             num_threads=args.num_threads, backend=args.backend, num_samples=len(prompts),
                             sampling=args.sampling())


def write_rows(output: str, rows: list[dict]) -> None:
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@dataclass
class PairsArguments(AskArguments):
    """`posttrain pairs` recipe keys: the data's answer is the chosen side; each question is asked in its row's
    mode."""

    no_think_fraction: float = field(
        default=0.0, metadata={"help": "Share of the questions asked under /no_think (where a think block is the "
                               "violation); the rest under /think, where an unclosed or missing one is."},
    )


def violation_turn(completion: str, reference: dict) -> dict:
    """The rejected assistant turn for `completion`: its think block (closed or not) as reasoning, the text after
    it as the answer, or the reference's answer when it never got that far."""
    reasoning, answer = None, completion
    if THINK_OPEN in completion or THINK_CLOSE in completion:
        before, _, after = completion.partition(THINK_CLOSE)
        reasoning, answer = before.replace(THINK_OPEN, "").strip() or None, after
    answer = answer.strip() or reference["content"]
    return {"role": "assistant", "content": answer, "reasoning_content": reasoning}


def question_rows(conversations, mode: str | None = None) -> tuple[list[dict], list[dict]]:
    """(prompt rows for `evaluate`, the reference answer of each): the last assistant turn of each conversation is
    the reference; the turns before it are the prompt, its system message replaced by the flag of `mode` (default:
    the row's own mode), as in evaluation."""
    prompts, references = [], []
    for row in conversations:
        *history, reference = row["messages"]
        prompt = [{"role": t["role"], "content": t["content"]} for t in history if t["role"] != "system"]
        asked = mode or row["mode"]
        prompts.append({"prompt": [mode_system_message(asked), *prompt], "answer": reference["content"],
                        "mode": asked, "level": None, "source": "pairs", "gym": "", "where": row["where"]})
        references.append({"role": "assistant", "content": reference["content"],
                           "reasoning_content": reference["reasoning_content"]})
    return prompts, references


def violation_pairs(prompts: list[dict], references: list[dict], samples: list[dict]) -> list[dict]:
    """A preference row (posttrain.data's `preferences` format) for each sample the format reward failed."""
    return [
        {"prompt": row["prompt"][1:], "chosen": [reference],
         "rejected": [violation_turn(sample["completion"], reference)], "mode": row["mode"]}
        for row, reference, sample in zip(prompts, references, samples, strict=True) if sample["adherent"] == 0
    ]


def main(argv):
    from posttrain import data

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_ask(argv, PairsArguments, "posttrain pairs")
    if args is None:
        return 0
    conversations = data.load_conversations(args.datasets, no_think_fraction=args.no_think_fraction, seed=args.seed)
    prompts, references = question_rows(conversations)
    result = ask(args, prompts)
    pairs = violation_pairs(prompts, references, result["samples"])
    write_rows(args.output, pairs)
    asked = {mode: stats["n"] for mode, stats in result["modes"].items()}
    broken = {mode: sum(p["mode"] == mode for p in pairs) for mode in asked}
    logger.info("pairs: %d of %d answers broke their mode (%s of %s per mode) in %.0f s; wrote %s", len(pairs),
                len(prompts), broken, asked, result["generation"]["wall_s"], args.output)
    return 0
