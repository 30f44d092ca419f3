"""`posttrain route --config recipe.yaml`: /auto_think SFT rows whose choice is the checkpoint's own ability.

In the adaptive mode the model decides per question whether to think. Rows that show a random choice teach the
two formats but not the decision, and GRPO with `adaptive_accuracy` on the tiny model then moved the choice as
one bias for every question (README, "Adaptive thinking"). This command labels each question of a conversation
source by what the checkpoint can do without thinking: asked under /no_think (greedy), a right answer makes the
row a direct answer (empty think block), a wrong one a thought (the data's reasoning). The rows are written as
`messages` jsonl flagged /auto_think, which `posttrain sft` reads as `{name: messages, path: ...}`, each row
keeping its choice. Like `posttrain pairs`, ask questions the checkpoint did not train on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common.template import AUTO_MODE, mode_system_message
from posttrain import pairs

logger = logging.getLogger("posttrain")


@dataclass
class RouteArguments(pairs.AskArguments):
    """`posttrain route` recipe keys: each question is asked under /no_think; the data's answer, with its
    reasoning, is what a thought row shows."""


def routed_rows(prompts: list[dict], references: list[dict], samples: list[dict]) -> list[dict]:
    """A `messages` row per question (`pairs.question_rows`), flagged /auto_think: the reference reply without its
    reasoning where the sample (the checkpoint's /no_think answer) was right, with it where it was wrong."""
    rows = []
    for prompt, reference, sample in zip(prompts, references, samples, strict=True):
        reply = {"role": "assistant", "content": reference["content"]}
        if not sample["accuracy"] and reference["reasoning_content"]:
            reply["reasoning_content"] = reference["reasoning_content"]
        rows.append({"messages": [mode_system_message(AUTO_MODE), *prompt["prompt"][1:], reply]})
    return rows


def main(argv):
    from posttrain import data

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = pairs.parse_ask(argv, RouteArguments, "posttrain route")
    if args is None:
        return 0
    conversations = data.load_conversations(args.datasets, no_think_fraction=0.0, seed=args.seed)  # keep reasoning
    prompts, references = pairs.question_rows(conversations, mode="no_think")
    result = pairs.ask(args, prompts)
    rows = routed_rows(prompts, references, result["samples"])
    pairs.write_rows(args.output, rows)
    direct = sum("reasoning_content" not in row["messages"][-1] for row in rows)
    logger.info("route: %d of %d questions answered right without thinking (direct rows), %d thought, in %.0f s; "
                "wrote %s", direct, len(rows), len(rows) - direct, result["generation"]["wall_s"], args.output)
    return 0
