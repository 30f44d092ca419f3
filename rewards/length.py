"""Length shaping: DAPO's soft overlong punishment, cosine length-scaled accuracy, per-mode token budgets.

Lengths are in tokens: TRL passes `completion_ids` to every reward function, and those are used when present.
Called without them (tests, offline scoring), a length is estimated as ceil(characters / `chars_per_token`).
"""

from __future__ import annotations

import math

from rewards.accuracy import check_params, score
from rewards.format import chosen_modes, column, completion_text

CHARS_PER_TOKEN = 4.0  # rough English BPE ratio, for the fallback estimate only


def _check_chars_per_token(value: float) -> float:
    if not value > 0:
        raise ValueError(f"chars_per_token must be > 0, got {value!r}")
    return float(value)


def token_lengths(completions, completion_ids=None, chars_per_token: float = CHARS_PER_TOKEN) -> list[int]:
    """Tokens per completion: `len(completion_ids[i])` when given, else ceil(chars / chars_per_token)."""
    ids = completion_ids if isinstance(completion_ids, (list, tuple)) else []
    lengths = []
    for i, completion in enumerate(completions):
        n = _n_ids(ids[i]) if i < len(ids) else None
        lengths.append(n if n is not None else math.ceil(len(completion_text(completion)) / chars_per_token))
    return lengths


def _n_ids(row) -> int | None:
    if row is None or isinstance(row, (str, bytes, dict)):
        return None
    try:
        return len(row)
    except TypeError:  # not a sequence (e.g. a 0-d tensor)
        return None


class SoftOverlong:
    r"""`soft_overlong`: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), a penalty only.

        r(L) = 0                                 if L <= L_max - L_cache
             = ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max   (0 down to -1)
             = -1                                if L > L_max

    with L the completion's token count, L_max = `max_length`, L_cache = `cache_length` (0: a hard -1 past
    L_max). Reads `completion_ids`. Set `max_length` to the trainer's `max_completion_length`, so truncated
    completions get the full -1 and those near the limit a graded one rather than a cliff.

    The values are TRL's `trl.rewards.get_soft_overlong_punishment` (the same formula, called here); this class
    adds the registry name, parameter checks, and lengths that never raise (`token_lengths`: malformed
    `completion_ids` rows, or none at all, fall back to a character estimate, where TRL's would fail on `len`).
    """

    def __init__(self, max_length: int, cache_length: int, chars_per_token: float = CHARS_PER_TOKEN):
        from trl.rewards import get_soft_overlong_punishment  # here: pool workers import this package, not TRL

        if max_length < 1 or not 0 <= cache_length <= max_length:
            raise ValueError(f"need max_length >= 1 and 0 <= cache_length <= max_length, got {max_length}, {cache_length}")
        self.max_length, self.cache_length = max_length, cache_length
        self.chars_per_token = _check_chars_per_token(chars_per_token)
        self._trl = get_soft_overlong_punishment(max_completion_len=max_length, soft_punish_cache=cache_length)
        self.__name__ = "soft_overlong"

    def __call__(self, completions, completion_ids=None, **kwargs) -> list[float]:
        completions = list(completions or [])
        lengths = token_lengths(completions, completion_ids, self.chars_per_token)
        return self._trl([range(n) for n in lengths])  # TRL's reads only len() of each row


class CosineAccuracy:
    r"""`cosine_accuracy`: correctness scaled by length on a cosine schedule ("Demystifying Long Chain-of-Thought
    Reasoning", Yeo et al. 2025, appendix C.1; the Kimi k1.5 length reward has the same intent).

        p = min(L / L_max, 1),   c = cos(pi * p)
        correct: r = min_correct + (max_correct - min_correct) * (1 + c) / 2   (max_correct at L=0, min_correct at L_max)
        wrong:   r = max_wrong   + (min_wrong - max_wrong)     * (1 + c) / 2   (min_wrong at L=0, max_wrong at L_max)

    Short correct answers earn most; a wrong answer is punished most when short, so the model is not pushed to
    give up early on problems it cannot yet solve. Past L_max the value stays at the L_max end (clamped, or the
    cosine would climb again). Correctness is the `accuracy` reward's (reads `answer` and `completion_ids`,
    same `workers` / `timeout` / `batch_timeout`); an unparseable gold gives None.

    The formula is TRL's `trl.rewards.get_cosine_scaled_reward` (same bounds, same clamp; tests compare the two),
    not called: its correctness is `trl.rewards.accuracy_reward` on the whole completion, in-process (see
    `rewards.accuracy` for why not), and it cannot take ours.
    """

    def __init__(
        self,
        max_length: int,
        min_correct: float = 0.5,
        max_correct: float = 1.0,
        min_wrong: float = -1.0,
        max_wrong: float = -0.5,
        workers: int = 2,
        timeout: int = 3,
        batch_timeout: float | None = None,
        answer_column: str = "answer",
        chars_per_token: float = CHARS_PER_TOKEN,
    ):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        bounds = (min_correct, max_correct, min_wrong, max_wrong)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bounds):
            raise ValueError(f"min/max_correct and min/max_wrong must be finite numbers, got {bounds}")
        self.max_length = max_length
        self.min_correct, self.max_correct, self.min_wrong, self.max_wrong = map(float, bounds)
        self.workers, self.timeout, self.batch_timeout = check_params(workers, timeout, batch_timeout)
        self.answer_column, self.chars_per_token = answer_column, _check_chars_per_token(chars_per_token)
        self.__name__ = "cosine_accuracy"

    def __call__(self, completions, completion_ids=None, **kwargs) -> list[float | None]:
        completions = list(completions or [])
        golds = column(kwargs, self.answer_column, len(completions), self.__name__)
        correct = score(
            completions, golds, workers=self.workers, timeout=self.timeout, batch_timeout=self.batch_timeout,
            name=self.__name__, log_metric=kwargs.get("log_metric"),
        )
        lengths = token_lengths(completions, completion_ids, self.chars_per_token)
        return [None if ok is None else self.value(bool(ok), n) for ok, n in zip(correct, lengths)]

    def value(self, correct: bool, length: int) -> float:
        """TRL's `_CosineScaledReward` formula for one completion of `length` tokens."""
        c = math.cos(math.pi * min(length / self.max_length, 1.0))
        if correct:
            return self.min_correct + (self.max_correct - self.min_correct) * (1 + c) / 2
        return self.max_wrong + (self.min_wrong - self.max_wrong) * (1 + c) / 2


class LengthBudget:
    r"""`length_budget`: a per-mode token budget, a penalty only.

        r(L) = 0                              if L <= B_mode
             = -min(1, (L - B_mode) / (ramp * B_mode))   otherwise

    B_mode is `think_budget` or `no_think_budget` by the row's `mode` (under /auto_think: the mode the completion
    chose); the penalty falls linearly from 0 at the
    budget to -1 at (1 + ramp) * B_mode and stays there (bounded, so one runaway completion does not dominate
    a group's reward std). /no_think gets a much smaller budget: its point is a short, direct answer. Reads
    `mode` and `completion_ids`; a row whose mode is neither think nor no_think gets None.
    """

    def __init__(
        self,
        think_budget: int = 4096,
        no_think_budget: int = 512,
        ramp: float = 1.0,
        chars_per_token: float = CHARS_PER_TOKEN,
    ):
        if think_budget < 1 or no_think_budget < 1 or not ramp > 0:
            raise ValueError(f"need budgets >= 1 and ramp > 0, got {think_budget}, {no_think_budget}, {ramp!r}")
        self.budgets = {"think": think_budget, "no_think": no_think_budget}
        self.ramp, self.chars_per_token = float(ramp), _check_chars_per_token(chars_per_token)
        self.__name__ = "length_budget"

    def __call__(self, completions, completion_ids=None, **kwargs) -> list[float | None]:
        completions = list(completions or [])
        modes = [mode for _, mode in chosen_modes(completions, kwargs, self.__name__)]
        lengths = token_lengths(completions, completion_ids, self.chars_per_token)
        return [self.penalty(m, n) for m, n in zip(modes, lengths)]

    def penalty(self, mode: str | None, length: int) -> float | None:
        if mode is None:
            return None
        budget = self.budgets[mode]
        return 0.0 if length <= budget else -min(1.0, (length - budget) / (self.ramp * budget))
