"""`adaptive_accuracy`: accuracy that pays an /auto_think completion for answering directly when it can.

Under /auto_think the model decides: a completion that opens with an empty think block answered directly, any
other thought (`rewards.format.decide`). Correct and direct > correct after thinking > wrong:

    r = correct * (1 + direct_bonus * answered_directly)

so a policy gains by answering directly exactly where its direct accuracy p_direct satisfies
p_direct * (1 + direct_bonus) > p_think: it keeps thinking where thinking is what makes it right, and drops it
where a direct answer is about as good (AdaptThink's constrained objective has the same shape: accuracy kept,
a bonus for not thinking). Rows in /think or /no_think score their plain accuracy: the mode was not theirs to
choose.

Collapse guard (AdaptThink and Thinkless both report a policy collapsing onto one mode early, after which the
other is never sampled and never learned): for the first `balance_steps` steps, a completion whose choice is the
minority in its group (the completions of one prompt) earns `balance_bonus` x (1 - the share of its choice), so
both choices keep being sampled while the accuracy signal forms. The think rate of the batch's /auto_think
completions is logged as `rewards/<name>/think_rate` (TRL's `log_metric`).
"""

from __future__ import annotations

from itertools import groupby

from common.template import AUTO_MODE
from rewards.accuracy import Accuracy
from rewards.format import column, completion_text, decide, normalize_mode


class AdaptiveAccuracy(Accuracy):
    """Params: `direct_bonus` (> 0: how much more a correct direct answer is worth), `balance_bonus` and
    `balance_steps` (the collapse guard; 0 steps turns it off), and `Accuracy`'s (`workers`, `timeout`,
    `batch_timeout`, `answer_column`). Reads `answer`, `mode`, and `prompts` (to find each prompt's group)."""

    def __init__(self, direct_bonus: float = 0.1, balance_bonus: float = 0.1, balance_steps: int = 0,
                 workers: int = 2, timeout: int = 3, batch_timeout: float | None = None, answer_column: str = "answer"):
        super().__init__(workers=workers, timeout=timeout, batch_timeout=batch_timeout, answer_column=answer_column)
        if not direct_bonus > 0 or balance_bonus < 0 or balance_steps < 0:
            raise ValueError(f"need direct_bonus > 0, balance_bonus >= 0 and balance_steps >= 0, got "
                             f"{direct_bonus!r}, {balance_bonus!r}, {balance_steps!r}")
        self.direct_bonus, self.balance_bonus, self.balance_steps = direct_bonus, balance_bonus, balance_steps
        self.__name__ = "adaptive_accuracy"

    def __call__(self, completions, **kwargs) -> list[float | None]:
        completions = list(completions or [])
        correct = super().__call__(completions, **kwargs)
        auto = [normalize_mode(m) == AUTO_MODE for m in column(kwargs, "mode", len(completions), self.__name__)]
        direct = [a and decide(completion_text(c))[0] == "no_think" for c, a in zip(completions, auto)]
        rewards = [None if ok is None else ok * (1 + self.direct_bonus * d) for ok, d in zip(correct, direct)]
        state, log_metric = kwargs.get("trainer_state"), kwargs.get("log_metric")
        if self.balance_steps and state is not None and state.global_step < self.balance_steps:
            rewards = self.balanced(rewards, auto, direct, list(kwargs.get("prompts") or [None] * len(completions)))
        if log_metric is not None and any(auto):
            log_metric(f"rewards/{self.__name__}/think_rate", 1 - sum(direct) / sum(auto))
        return rewards

    def balanced(self, rewards: list, auto: list[bool], direct: list[bool], groups: list) -> list:
        """`rewards` with the minority bonus added to the /auto_think completions whose choice is the minority
        of their group (consecutive completions of the same prompt, as TRL orders them)."""
        out = list(rewards)
        for _, members in groupby(range(len(rewards)), key=lambda i: repr(groups[i])):
            index = [i for i in members if auto[i]]
            share_direct = sum(direct[i] for i in index) / len(index) if index else 0.0
            for i in index:
                share = share_direct if direct[i] else 1 - share_direct
                if share < 0.5 and out[i] is not None:
                    out[i] += self.balance_bonus * (1 - share)
        return out
