"""`posttrain midtrain --config recipe.yaml`: continued pretraining on distilled reasoning traces.

SmolLM3 mid-trained its base on reasoning traces (conversations whose assistant turns carry `<think>` reasoning)
before SFT, with the loss on every token, packed. Here that is the SFT stage with other defaults:
- `packing: true, packing_strategy: bfd`: TRL 1.16 turns padding-free on for BFD, so a batch is one flattened
  row with `position_ids` restarting at every document and no `attention_mask`; transformers' masking then builds
  a block-diagonal (intra-document) causal mask from the restarts (with `use_cache=False`, which SFTTrainer sets).
  Documents never attend to each other and no compute is spent on padding;
- loss on the whole sequence (`assistant_only_loss: false`, `completion_only_loss: false`); set
  `assistant_only_loss: true` to train on the assistant turns only;
- every row in /think mode and required to carry reasoning (`no_think_fraction: 0`, `require_reasoning: true`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain import sft, stage

MIDTRAIN_DEFAULTS = {
    "packing": True, "packing_strategy": "bfd", "assistant_only_loss": False, "completion_only_loss": False,
}


@dataclass
class MidtrainScriptArguments(sft.SFTScriptArguments):
    """Recipe keys of the midtrain stage (SFTConfig and ModelConfig keys go in the same file)."""

    no_think_fraction: float = field(
        default=0.0, metadata={"help": "Share of rows rendered in /no_think mode; reasoning traces want 0."}
    )
    require_reasoning: bool = field(
        default=True, metadata={"help": "Refuse rows whose assistant turn has no reasoning (think trace)."}
    )


def parse(argv: list[str]):
    """The recipe as (script, SFTConfig, ModelConfig); None after `--help`. The pipeline checks it with this too."""
    from trl import ModelConfig, SFTConfig

    return stage.parse_args(
        (MidtrainScriptArguments, SFTConfig, ModelConfig), argv, "posttrain midtrain", MIDTRAIN_DEFAULTS
    )


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args is None:
        return 0
    sft.build("midtrain", *args).run()
    return 0
