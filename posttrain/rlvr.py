"""`posttrain rlvr --config recipe.yaml`: GRPO with verifiable rewards on prompts tagged /think or /no_think.

TRL's GRPOTrainer does the work: rollouts (transformers `generate` on CPU, vLLM `colocate` or `server` on GPUs),
group advantages, the dapo / grpo / dr_grpo / bnpo losses, clipping and KL, all set by GRPOConfig keys in the
recipe. What this stage adds:
- the prompts: `posttrain.data.stage_dataset` (`load_prompts`) mixes the modes by `no_think_fraction`. GRPO's
  `chat_template_kwargs` is one value for the whole run, so each prompt carries its mode as a /think or
  /no_think system message (the template honours it), and a `mode` column the rewards read;
- rewards by name (`rewards.get_reward`), each with its params from `reward_kwargs`, weighted by TRL's
  `reward_weights`;
- per-mode metrics every step: each reward's mean and the mean completion length for /think and /no_think
  separately. TRL logs them over both modes at once, which hides the failure RL is prone to here: reasoning
  that grows longer and longer, or leaks into /no_think, while the averages look fine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl.trainer.utils import get_callable_name

from common.errors import UserError
from common.outputs import StageOutput
from common.recipe import refuse_remote_code
from posttrain import stage

logger = logging.getLogger("posttrain")

# GRPOConfig's vllm_server_host defaults to 0.0.0.0; the rollout server (`posttrain serve`) binds to 127.0.0.1.
RLVR_DEFAULTS = {"vllm_server_host": "127.0.0.1"}
# The losses TRL 1.16's GRPOTrainer computes (`_compute_loss`). Ours, not TRL's check: GRPOConfig takes any string
# and the trainer raises "Unknown loss type" only at the first step, after the model is loaded and rollouts
# generated; TRL exports no list (tests check this one against GRPOConfig's documented values).
LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")


@dataclass
class RLVRScriptArguments(stage.StageArguments):
    """Recipe keys of the RLVR stage (GRPOConfig and ModelConfig keys go in the same file). `datasets` are prompt
    sources (arithmetic, gsm8k, math500, prompts) and `no_think_fraction` the share of /no_think prompts."""

    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": "Rewards by name (rewards.REWARDS); `reward_weights` weighs them, in this order."},
    )
    reward_kwargs: dict = field(
        default_factory=dict,
        metadata={"help": "Params per reward name, e.g. {length_budget: {think_budget: 256, no_think_budget: 32}}."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompts longer than this many tokens (rendered) are dropped or refused by "
                  "overlong_policy; GRPO itself never truncates a prompt. None: no limit."},
    )


class PerModeMetrics:
    """A reward function that also logs per mode through TRL's `log_metric` hook; its rewards are unchanged.

    Logs `rewards/<name>/<mode>` and, with `lengths=True`, `completions/<mode>/mean_length` (tokens, as TRL's
    `completions/mean_length` counts them). One value per completion: TRL sums and counts them across processes,
    so a logged figure is the exact mean over that mode's completions of a generation batch (batches within one
    logging step are averaged, as for TRL's own metrics).
    """

    def __init__(self, reward, lengths: bool):
        self.reward, self.lengths = reward, lengths
        self.__name__ = get_callable_name(reward)  # TRL logs `rewards/<name>/mean` under it

    def __call__(self, completions, **kwargs):
        rewards = self.reward(completions, **kwargs)
        log = kwargs.get("log_metric")
        if log is not None:
            for i, mode in enumerate(kwargs["mode"]):
                if rewards[i] is not None:
                    log(f"rewards/{self.__name__}/{mode}", float(rewards[i]))
                if self.lengths:
                    log(f"completions/{mode}/mean_length", float(len(kwargs["completion_ids"][i])))
        return rewards


def build_rewards(args: RLVRScriptArguments, reward_weights: list[float] | None) -> list[PerModeMetrics]:
    """The recipe's rewards, checked against each other so a typo fails before anything runs or is written."""
    import rewards

    if not args.reward_funcs:
        raise UserError("recipe key 'reward_funcs': name at least one reward")
    if reward_weights is not None and len(reward_weights) != len(args.reward_funcs):
        raise UserError(
            f"recipe key 'reward_weights': {len(reward_weights)} weights for {len(args.reward_funcs)} reward_funcs"
        )
    for name in args.reward_kwargs:
        if name not in args.reward_funcs:
            raise UserError(f"recipe key 'reward_kwargs': {name!r} is not one of reward_funcs {args.reward_funcs}")
    funcs = []
    for i, name in enumerate(args.reward_funcs):
        params = args.reward_kwargs.get(name) or {}
        if not isinstance(params, dict):
            raise UserError(f"recipe key 'reward_kwargs': {name!r} must map parameter names to values")
        try:
            funcs.append(PerModeMetrics(rewards.get_reward(name, **params), lengths=i == 0))
        except ValueError as e:
            key = "reward_kwargs" if name in rewards.REWARDS else "reward_funcs"
            raise UserError(f"recipe key {key!r}: {e}") from None
    return funcs


def check_rollouts(training, script: RLVRScriptArguments) -> None:
    """Loss and generation settings that would otherwise fail deep inside the trainer, after the model is loaded;
    a warning when the soft overlong penalty's limit is not the trainer's."""
    from trl.import_utils import is_vllm_available

    from posttrain.serve import VLLM_EXTRA

    if training.loss_type not in LOSS_TYPES:
        raise UserError(f"recipe key 'loss_type': must be one of {', '.join(LOSS_TYPES)}, got {training.loss_type!r}")
    overlong = script.reward_kwargs.get("soft_overlong") if "soft_overlong" in script.reward_funcs else None
    max_length = overlong.get("max_length") if isinstance(overlong, dict) else None
    if max_length is not None and max_length != training.max_completion_length:
        # Below the limit, completions are penalized that were never truncated; above it, the graded zone is
        # partly unreachable and truncated completions escape the full -1.
        logger.warning(
            "rlvr: reward_kwargs soft_overlong max_length %s differs from max_completion_length %s",
            max_length, training.max_completion_length,
        )
    if training.vllm_mode not in ("colocate", "server"):
        raise UserError(f"recipe key 'vllm_mode': must be colocate or server, got {training.vllm_mode!r}")
    if training.use_vllm and not is_vllm_available():
        raise UserError(f"recipe key 'use_vllm': vLLM is not installed ({VLLM_EXTRA}, on a CUDA machine)")
    refuse_remote_code(training.trust_remote_code)


def build(script: RLVRScriptArguments, training, model_args) -> stage.StageRun:
    """Validate everything, load prompts and policy, and build the GRPOTrainer. Nothing is written but the empty
    `<output_dir>.partial` that the Trainer creates for itself."""
    from trl import GRPOTrainer

    from posttrain import data

    out = StageOutput(training.output_dir, script.overwrite_output_dir)
    stage.validate_model_args(model_args)
    check_rollouts(training, script)
    reward_funcs = build_rewards(script, training.reward_weights)
    logger.info("rlvr: rewards %s, weights %s", script.reward_funcs, training.reward_weights)
    tokenizer, new_tokens = stage.load_tokenizer(model_args, script.tokenizer_name_or_path, script.default_instructions)
    dataset, data_record = data.stage_dataset("rlvr", "prompts", script, tokenizer, seed=training.seed,
                                              max_length=script.max_prompt_length)

    model = stage.load_model(model_args, tokenizer, new_tokens)
    record = {"recipe": stage.recipe_record(script, training, model_args), "data": data_record}
    training.output_dir = str(out.partial)
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=training, train_dataset=dataset, processing_class=tokenizer,
        peft_config=stage.peft_config(model_args, model, tokenizer, new_tokens),
    )
    return stage.StageRun("rlvr", trainer, out, model_args, tokenizer, new_tokens, record)


def parse(argv: list[str]):
    """The recipe as (script, GRPOConfig, ModelConfig); None after `--help`. The pipeline checks it with this too."""
    from trl import GRPOConfig, ModelConfig

    return stage.parse_args((RLVRScriptArguments, GRPOConfig, ModelConfig), argv, "posttrain rlvr", RLVR_DEFAULTS)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args is None:
        return 0
    build(*args).run()
    return 0
