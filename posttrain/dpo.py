"""`posttrain dpo --config recipe.yaml`: preference optimization (DPO or APO) on /think and /no_think pairs.

TRL's DPOTrainer does the work; its `loss_type` picks the objective: `sigmoid` (DPO), `apo_zero` (APO when the
chosen answers are better than the policy's own: push chosen up, rejected down) or `apo_down` (when they are
not: push both down, rejected more); a list such as `[apo_zero, sft]` adds the chosen answer's NLL (RPO), which
keeps a small model's accuracy where APO alone lowered it (recipes/tiny/dpo.yaml). Each pair's
`chat_template_kwargs` renders it in its mode. What this stage adds:
- the learning rate: SmolLM3's APO ran at about a tenth of its SFT learning rate. A recipe that does not set
  `learning_rate` gets `sft_learning_rate_ratio` (0.1) x the SFT run's rate, read from the `posttrain_run.json`
  of the checkpoint it starts from, or from the SFT recipe named by `sft_recipe`; the value and its origin are
  logged and kept in the run record;
- the reference model: the starting checkpoint loaded again from its path (with LoRA: the base with adapters
  disabled), so it is exactly the policy before training;
- the pair mixture and mode counts (`posttrain.data.stage_dataset`) and the checkpoint discipline
  (`posttrain.stage`) shared with SFT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from common.errors import UserError
from common.outputs import RUN_RECORD, StageOutput, read_run_record
from posttrain import stage

logger = logging.getLogger("posttrain")

# `learning_rate: None` marks "not set by the recipe": it is then derived from the SFT run (see module doc).
DPO_DEFAULTS = {"learning_rate": None}


@dataclass
class DPOScriptArguments(stage.StageArguments):
    """Recipe keys of the DPO stage (DPOConfig and ModelConfig keys go in the same file)."""

    sft_recipe: str | None = field(
        default=None,
        metadata={"help": "SFT recipe whose learning rate the default DPO learning rate derives from; without it, "
                  "the posttrain_run.json of model_name_or_path is read. Ignored when learning_rate is set."},
    )
    sft_learning_rate_ratio: float = field(
        default=0.1, metadata={"help": "Default learning rate = this x the SFT learning rate (SmolLM3: ~0.1)."}
    )


def resolve_learning_rate(script: DPOScriptArguments, training, model_args) -> tuple[float, str]:
    """(learning rate, where it came from): the recipe's own value, else the ratio times the SFT rate."""
    if training.learning_rate is not None:
        return training.learning_rate, "recipe"
    if script.sft_recipe:
        from trl import ModelConfig, SFTConfig

        from posttrain import sft

        _, sft_training, _ = stage.parse_args(
            (sft.SFTScriptArguments, SFTConfig, ModelConfig), ["--config", script.sft_recipe], "posttrain sft",
            sft.SFT_DEFAULTS,
        )
        sft_lr, source = sft_training.learning_rate, f"SFT recipe {script.sft_recipe}"
    else:
        path = f"{model_args.model_name_or_path}/{RUN_RECORD}"
        record = read_run_record(model_args.model_name_or_path)
        if record is None or record.get("stage") != "sft" or not isinstance(record.get("learning_rate"), float):
            found = "not found" if record is None else f"is a {record.get('stage')!r} run, not an SFT run"
            raise UserError(
                f"recipe key 'learning_rate' is not set and cannot be derived: {path} {found} "
                "(set learning_rate, or sft_recipe: path/to/sft.yaml)"
            )
        sft_lr, source = record["learning_rate"], f"SFT run {path}"
    lr = float(f"{script.sft_learning_rate_ratio * sft_lr:.12g}")  # 3e-4, not 0.1 * 3e-3 = 3.0000000000000003e-4
    return lr, f"{script.sft_learning_rate_ratio} x {sft_lr:g} from {source}"


def build(script: DPOScriptArguments, training, model_args) -> stage.StageRun:
    """Validate everything, load pairs, policy and reference, and build the DPOTrainer. Nothing is written but
    the empty `<output_dir>.partial` the Trainer makes for itself."""
    from trl import DPOTrainer

    from posttrain import data

    out = StageOutput(training.output_dir, script.overwrite_output_dir)
    stage.validate_model_args(model_args, training)
    training.learning_rate, lr_origin = resolve_learning_rate(script, training, model_args)
    logger.info("dpo: learning_rate %g (%s)", training.learning_rate, lr_origin)
    tokenizer, new_tokens = stage.load_tokenizer(model_args, script.tokenizer_name_or_path, script.default_instructions)
    dataset, data_record = data.stage_dataset("dpo", "preferences", script, tokenizer, seed=training.seed,
                                              max_length=training.max_length)

    model = stage.load_model(model_args, tokenizer, new_tokens)
    # With LoRA, TRL uses the base with adapters disabled as the reference.
    ref_model = None if model_args.use_peft else stage.load_model(model_args, tokenizer, new_tokens)
    record = {
        "recipe": stage.recipe_record(script, training, model_args),
        "learning_rate_origin": lr_origin,
        "data": data_record,
    }
    training.output_dir = str(out.partial)
    trainer = DPOTrainer(
        model=model, ref_model=ref_model, args=training, train_dataset=dataset, processing_class=tokenizer,
        peft_config=stage.peft_config(model_args, model, tokenizer, new_tokens),
    )
    return stage.StageRun("dpo", trainer, out, model_args, tokenizer, new_tokens, record)


def parse(argv: list[str]):
    """The recipe as (script, DPOConfig, ModelConfig); None after `--help`. The pipeline checks it with this too."""
    from trl import DPOConfig, ModelConfig

    return stage.parse_args((DPOScriptArguments, DPOConfig, ModelConfig), argv, "posttrain dpo", DPO_DEFAULTS)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args is None:
        return 0
    build(*args).run()
    return 0
