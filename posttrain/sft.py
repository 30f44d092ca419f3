"""`posttrain sft --config recipe.yaml`: supervised fine-tuning on a /think + /no_think mixture.

TRL's SFTTrainer does the work: each row's `chat_template_kwargs` ({"enable_thinking": ...}) renders it in its
mode with the project's template, whose `{% generation %}` markers make `assistant_only_loss=True` train on the
assistant turns (and their `<|im_end|>`) only. What this stage adds:
- the mixture: `posttrain.data.stage_dataset` mixes the recipe's sources (`load_conversations`) and assigns
  modes by `no_think_fraction`;
- no silent drops: rows longer than `max_length` are dropped (or refused) *before* TRL sees them and counted per
  mode; the run fails if a mode the mixture asks for has no rows left, and fails if TRL drops any row itself
  (truncation once removed every /think row of a run without a word: 0% /think adherence);
- the checkpoint discipline of `posttrain.stage` (atomic output dir, run record).

`posttrain midtrain` is this stage with other defaults (packing, loss on the whole sequence): see midtrain.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import UserError
from common.outputs import StageOutput
from posttrain import stage

# Stage defaults under the recipe. Packing stays TRL's default (off): BFD packing is padding-free, i.e. one
# flattened row per batch, and without flash-attention (CPU: sdpa) attention then costs (total tokens)^2 instead
# of sum(row^2) -- measured 15 vs 41 rows/s for padding on the tiny recipe (bench/sft_packing.py). Turn it on with
# flash_attention_2 on GPUs (recipes/smollm3/sft.yaml). `padding_free: true` without packing flattens each batch
# of rows as they come (block-diagonal sdpa attention from restarting position_ids): no padding cells, and at a few
# rows per batch attention stays cheap -- same losses, 1.49x faster on SmolLM2-135M (recipes/smollm2-135m/sft.yaml).
SFT_DEFAULTS = {"assistant_only_loss": True}


@dataclass
class SFTScriptArguments(stage.StageArguments):
    """Recipe keys of the SFT stage (SFTConfig and ModelConfig keys go in the same file)."""

    require_reasoning: bool = field(
        default=False,
        metadata={"help": "Refuse rows whose assistant turn has no reasoning (think trace) to show in /think mode."},
    )
    token_metrics: bool = field(
        default=True,
        metadata={"help": "Log TRL's per-step `entropy` and `mean_token_accuracy`. false: train on the model's own "
                  "loss (the same value) and log the loss only, which on CPU makes a tiny model's step 1.11x faster "
                  "(bench/sft_step.py)."},
    )


def build(name: str, script: SFTScriptArguments, training, model_args) -> stage.StageRun:
    """Validate everything, load data and model, and build the SFTTrainer. Nothing is written but the empty
    `<output_dir>.partial` the Trainer makes for itself."""
    from trl import SFTTrainer

    from posttrain import data

    out = StageOutput(training.output_dir, script.overwrite_output_dir)
    stage.validate_model_args(model_args, training)
    tokenizer, new_tokens = stage.load_tokenizer(model_args, script.tokenizer_name_or_path, script.default_instructions)
    dataset, data_record = data.stage_dataset(name, "conversations", script, tokenizer, seed=training.seed,
                                              max_length=training.max_length)

    model = stage.load_model(model_args, tokenizer, new_tokens)
    record = {"recipe": stage.recipe_record(script, training, model_args), "data": data_record}
    training.output_dir = str(out.partial)
    if training.padding_free and not training.packing:
        # TRL refuses to truncate padding-free rows; stage_dataset has already dropped (or refused) the overlong ones.
        training.max_length = None
    trainer_class = SFTTrainer if script.token_metrics else _loss_only(SFTTrainer)
    trainer = trainer_class(
        model=model, args=training, train_dataset=dataset, processing_class=tokenizer,
        peft_config=stage.peft_config(model_args, model, tokenizer, new_tokens),
    )
    kept = _documents(trainer.train_dataset)
    if kept < len(dataset):  # (wrapped packing may cut rows into more pieces, never fewer)
        out.abandon()
        raise UserError(
            f"{name}: TRL kept {kept} of {len(dataset)} rows after tokenization (fully masked rows dropped); "
            "check max_length against the rendered length of the rows"
        )
    return stage.StageRun(name, trainer, out, model_args, tokenizer, new_tokens, record)


def _loss_only(sft_trainer: type) -> type:
    """SFTTrainer without its per-step metrics. TRL computes the loss, entropy and token accuracy together in a fused
    LM head that, off CUDA, projects every position (prompt and padding included) in chunks, saving memory that a
    small vocabulary does not need; it has no switch for that, so this trainer takes `Trainer.compute_loss`: the
    model's own loss over the same labels, one matrix product for the head."""
    from transformers import Trainer

    class LossOnlySFTTrainer(sft_trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch)

    return LossOnlySFTTrainer


def _documents(prepared) -> int:
    """Rows in TRL's prepared dataset: packed rows record each document's length in `seq_lengths`."""
    if "seq_lengths" in prepared.column_names:
        return sum(len(lengths) for lengths in prepared["seq_lengths"])
    return len(prepared)


def parse(argv: list[str]):
    """The recipe as (script, SFTConfig, ModelConfig); None after `--help`. The pipeline checks it with this too."""
    from trl import ModelConfig, SFTConfig

    return stage.parse_args((SFTScriptArguments, SFTConfig, ModelConfig), argv, "posttrain sft", SFT_DEFAULTS)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args is None:
        return 0
    build("sft", *args).run()
    return 0
