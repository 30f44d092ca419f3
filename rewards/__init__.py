"""Verifiable rewards for GRPO over TRL, aware of the hybrid /think and /no_think modes.

Every reward is a picklable callable with TRL's reward signature, `fn(completions, **kwargs) -> list[float | None]`
(completions as strings or `[{"role": "assistant", "content": ...}]`, dataset columns as kwargs lists), and a
`__name__` that TRL logs its mean/std under. Recipes name them; weights go in `GRPOConfig.reward_weights`:

    reward_funcs = [
        get_reward("accuracy"),
        get_reward("format"),
        get_reward("soft_overlong", max_length=4096, cache_length=512),
    ]

Content never makes a reward raise (None, empty, megabyte, malformed or hostile text all score a finite value,
or None where a reward documents "not applicable"); a missing dataset column or a bad parameter does, with a
message naming it.
"""

from __future__ import annotations

import inspect

from rewards.accuracy import Accuracy
from rewards.adaptive import AdaptiveAccuracy
from rewards.format import ModeFormat
from rewards.gym import GymAccuracy
from rewards.length import CosineAccuracy, LengthBudget, SoftOverlong
from rewards.open_r1 import ReasoningSteps, RepetitionPenalty, TagCount

# Name -> factory: `REWARDS[name](**params)` builds the reward (`get_reward` also checks the params).
REWARDS: dict[str, type] = {
    "accuracy": Accuracy,
    "gym_accuracy": GymAccuracy,  # reasoning-gym rows, scored by their task (rewards/gym.py)
    "adaptive_accuracy": AdaptiveAccuracy,  # /auto_think: a correct direct answer pays more (rewards/adaptive.py)
    "format": ModeFormat,
    "mode_format": ModeFormat,
    "soft_overlong": SoftOverlong,
    "cosine_accuracy": CosineAccuracy,
    "length_budget": LengthBudget,
    # open-r1's shaping rewards, for the hybrid format (rewards/open_r1.py)
    "repetition_penalty": RepetitionPenalty,
    "tag_count": TagCount,
    "reasoning_steps": ReasoningSteps,
}


def get_reward(name: str, **params):
    """The reward registered as `name`, built with `params`, its `__name__` set to `name` for TRL's logs.

    An unknown name or parameter raises ValueError listing what is known, so a recipe typo fails at startup.
    """
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}")
    factory = REWARDS[name]
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"reward {name!r} got unknown parameter(s) {unknown}; it accepts: {', '.join(accepted) or 'none'}"
        )
    try:
        reward = factory(**params)
    except TypeError as e:  # a required parameter missing
        raise ValueError(f"reward {name!r}: {e}; it accepts: {', '.join(accepted)}") from None
    reward.__name__ = name
    return reward


__all__ = [
    "REWARDS",
    "get_reward",
    "Accuracy",
    "AdaptiveAccuracy",
    "ModeFormat",
    "SoftOverlong",
    "CosineAccuracy",
    "LengthBudget",
    "RepetitionPenalty",
    "TagCount",
    "ReasoningSteps",
]
