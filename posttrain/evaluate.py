"""`posttrain eval`: how a checkpoint does in each mode -- accuracy (overall, per difficulty level, per
source), mode adherence, completion length -- and how its lengths drifted since the previous stage.

Every question is asked in BOTH modes (`in_modes`), so /think and /no_think accuracy compare on the same
questions, level by level: the gap between them is what the hybrid recipe is for. Scoring goes through the
same reward functions RLVR trains on (`rewards.get_reward("accuracy")`, `"format"`; reasoning-gym rows:
`"gym_accuracy"`, their task's own scorer, full score only), so "accurate" and
"adherent" here mean what the RL reward paid for (adherent also asks that the completion ended before the token
budget).

Generation is greedy unless `temperature` > 0. On CPU (or a GPU without vLLM) it is batched transformers
`generate`: prompts sorted by length and batched under a token budget so a batch pads little, left padding, KV
cache, `inference_mode`. With vLLM installed and CUDA present the same token ids go to `vllm.LLM` with the same
settings. Both backends hand back raw token ids and one function decodes them: the output is cut at
`<|im_end|>` and decoded WITHOUT `skip_special_tokens`, which would drop think tags where a tokenizer marks them
special (the Llama-3 one does); pad tokens are removed by id instead.

Reward-hacking monitor: `--baseline prev/eval.json` puts the ratio of mean completion tokens per mode (this
checkpoint / the baseline) in the result; a ratio past `length_drift_warn` either way is logged as a warning.
RL that learns to pad, or a penalty that collapses reasoning, shows up here before it shows in accuracy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from datasets import Dataset

from common.errors import UserError
from common.recipe import help_requested, parse_recipe
from common.template import ALL_MODES, AUTO_MODE, EOS_TOKEN, MODES, attach_template, mode_system_message
from common.tokenizers import load_pretrained_tokenizer
from posttrain import fidelity

logger = logging.getLogger("posttrain")
EVAL_BATCH_TIMEOUT_S = 600.0  # the accuracy reward's deadline for all of an evaluation's rows, scored in one call


@dataclass
class GenerationArguments:
    """Recipe keys of the commands that generate from a checkpoint: `posttrain eval` and `posttrain pairs`."""

    model_name_or_path: str = field(metadata={"help": "Checkpoint directory to generate from (transformers, "
                                              "safetensors)."})
    seed: int = field(default=0, metadata={"help": "Seed for generated (arithmetic) questions and for sampling."})
    temperature: float = field(
        default=0.0,
        metadata={"help": "0: greedy, the default (reproducible). SmolLM3's model card serves at 0.6 with top_p 0.95; "
                  "a small model's greedy decoding can loop where sampling does not, so report both."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling share, with temperature > 0."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget per completion."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per generation batch."})
    num_threads: int | None = field(
        default=1,
        metadata={"help": "CPU threads for transformers generation (null: torch's default, one per core). Decoding "
                  "a small model is many tiny ops: on 2 busy cores one thread was 8x faster than two."},
    )
    backend: Literal["auto", "transformers", "vllm"] = field(
        default="auto", metadata={"help": "auto: vLLM when it is installed and CUDA is present, else transformers."}
    )

    def sampling(self) -> dict | None:
        """`evaluate`'s sampling settings; None (greedy) at temperature 0."""
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed} if self.temperature else None


@dataclass
class EvalArguments(GenerationArguments):
    """`posttrain eval` recipe keys."""

    datasets: list[dict] = field(
        default_factory=lambda: [{"name": "arithmetic", "split": "test", "rows": 100}],
        metadata={"help": "Prompt sources (posttrain.data: arithmetic, gsm8k, math500, reasoning_gym, prompts). Every question "
                  "is asked in every mode of `modes`, so N questions give 2N completions by default."},
    )
    modes: list[str] = field(
        default_factory=lambda: list(MODES),
        metadata={"help": f"The modes every question is asked in: think, no_think, and {AUTO_MODE} (adaptive: the "
                  "model decides; its think rate is reported per level, beside its accuracy and length)."},
    )
    num_samples: int = field(default=8, metadata={"help": "Completions kept verbatim in the output (the first N)."})
    num_generations: int = field(
        default=1,
        metadata={"help": "Samples per question (temperature > 0): accuracy is pass@1 averaged over them, and "
                  "pass@k is reported for k = 1 and this number. SmolLM3's evaluations sample at T 0.6, top_p 0.95."},
    )
    baseline: str | None = field(
        default=None, metadata={"help": "A previous stage's eval JSON: report the mean-length ratio per mode."}
    )
    leak_tokens: int = field(
        default=fidelity.LEAK_TOKENS,
        metadata={"help": "A /no_think completion longer than this many tokens counts as a leak (it reasons)."},
    )
    length_drift_warn: float = field(
        default=1.5, metadata={"help": "Warn when a mode's mean length grew or shrank by more than this factor."}
    )
    output_json: str | None = field(default=None, metadata={"help": "Write the result dict here as JSON."})
    output_md: str | None = field(default=None, metadata={"help": "Write the markdown tables here."})


# ------------------------------------------------------------------------------------------------ prompts

def in_modes(prompts: Dataset, modes: Sequence[str] = MODES) -> Dataset:
    """Each row once per mode (/think then /no_think by default): the system message (which in posttrain.data's
    prompt format carries only the mode flag) is replaced and `mode` set, every other column kept."""

    def expand(batch: dict) -> dict:
        out = {key: [] for key in batch}
        for i, messages in enumerate(batch["prompt"]):
            question = [m for m in messages if m["role"] != "system"]
            for mode in modes:
                for key in batch:
                    out[key].append(batch[key][i])
                out["prompt"][-1] = [mode_system_message(mode), *question]
                out["mode"][-1] = mode
        return out

    return prompts.map(expand, batched=True)


def load_eval_prompts(sources, seed: int, modes: Sequence[str] = MODES) -> tuple[Dataset, list[str]]:
    """Every question of the sources that can be loaded, in `modes`, and one line per source that cannot (a Hub
    dataset offline and not cached): evaluation goes on without it, and the log and the report say so."""
    from posttrain import data

    kept, skipped = data.loadable(sources, data.SOURCE_NAMES["prompts"])
    for line in skipped:
        logger.warning("SKIPPED evaluation source %s", line)
    if not kept:
        raise UserError(f"no evaluation source can be loaded: {'; '.join(skipped)}")
    return in_modes(data.load_prompts(kept, no_think_fraction=0.0, seed=seed), modes), skipped


# --------------------------------------------------------------------------------------------- generation

def check_checkpoint(model_path: str | Path) -> Path:
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a checkpoint directory (no config.json)")
    return path


def _load_tokenizer(path: Path):
    tokenizer = load_pretrained_tokenizer(path)
    if tokenizer.chat_template is None:  # e.g. a pretraining checkpoint saved without one
        logger.info("%s: tokenizer has no chat template; using the hybrid template", path)
        attach_template(tokenizer)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    if eos_id is None or eos_id == tokenizer.unk_token_id:
        raise UserError(f"{path}: the tokenizer has no {EOS_TOKEN} token to stop generation at")
    if tokenizer.pad_token is None:  # safe: a completion is cut at its first eos before pads are dropped
        tokenizer.pad_token = EOS_TOKEN
    tokenizer.padding_side = "left"
    return tokenizer, eos_id


def _batches(lengths: list[int], batch_size: int, max_new_tokens: int,
             groups: Sequence[str] | None = None) -> list[list[int]]:
    """Prompt indices grouped into batches, longest prompts first (so a batch holds prompts of about one
    length, and the memory peak comes first). `batch_size` prompts of the mean length set a token budget
    (rows x (longest prompt + max_new_tokens)); batches of longer prompts hold fewer rows, so a few long
    MATH-500 problems do not pad a hundred short arithmetic prompts to their length. With `groups` (each
    prompt's mode), a batch holds one group only: a batch decodes until its longest completion ends, and one
    /think row that runs to the budget would otherwise hold up sixty finished /no_think rows."""
    budget = batch_size * (sum(lengths) / len(lengths) + max_new_tokens)
    group = groups or [""] * len(lengths)
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (group[i], -lengths[i])):
        rows = batches[-1] if batches else []
        if (rows and len(rows) < batch_size and group[rows[0]] == group[i]
                and (len(rows) + 1) * (lengths[rows[0]] + max_new_tokens) <= budget):
            rows.append(i)
        else:
            batches.append([i])
    return batches


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    """torch's intra-op threads set to `n` for the block, then restored (it is a process-wide setting)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _generate_transformers(path: Path, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int,
                           batch_size: int, eos_id: int, num_threads: int | None,
                           modes: Sequence[str] | None = None, sampling: dict | None = None) -> list[list[int]]:
    """Batched generation (greedy, or `sampling`: temperature, top_p, seed), one mode per batch; returns each
    prompt's new token ids (pads after an early stop included)."""
    from transformers import AutoModelForCausalLM, GenerationConfig, set_seed

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32 if device == "cpu" else "auto",  # bf16 matmuls crawl on CPU
            trust_remote_code=False, use_safetensors=True,
        )
    except OSError as e:
        raise UserError(f"{path}: cannot load model ({str(e).splitlines()[0]})") from None
    model.to(device).eval()
    decoding = {"do_sample": False}
    if sampling:
        decoding = {"do_sample": True, "temperature": sampling["temperature"], "top_p": sampling["top_p"]}
        set_seed(sampling["seed"])
    config = GenerationConfig(max_new_tokens=max_new_tokens, use_cache=True, eos_token_id=eos_id,
                              pad_token_id=tokenizer.pad_token_id, **decoding)
    generated: list[list[int]] = [[] for _ in prompt_ids]
    with torch.inference_mode(), _cpu_threads(num_threads if device == "cpu" else None):
        for rows in _batches([len(ids) for ids in prompt_ids], batch_size, max_new_tokens, modes):
            batch = tokenizer.pad({"input_ids": [prompt_ids[i] for i in rows]}, return_tensors="pt").to(device)
            out = model.generate(**batch, generation_config=config)
            for i, ids in zip(rows, out[:, batch["input_ids"].shape[1]:].tolist()):
                generated[i] = ids
    return generated


def _generate_vllm(path: Path, prompt_ids: list[list[int]], *, max_new_tokens: int, eos_id: int,
                   sampling: dict | None = None) -> list[list[int]]:
    """The same prompts (as token ids) and decoding settings through vLLM; returns the new token ids."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(path), trust_remote_code=False, load_format="safetensors", seed=0)
    params = SamplingParams(max_tokens=max_new_tokens, stop_token_ids=[eos_id],
                            **(sampling or {"temperature": 0.0}))
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _use_vllm(backend: str) -> bool:
    available = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if backend == "vllm" and not available:
        raise UserError("backend vllm needs the vllm package and a CUDA GPU (pip install 'posttrain[vllm]')")
    return backend == "vllm" or (backend == "auto" and available)


def decode_completion(tokenizer, ids: Sequence[int], eos_id: int) -> tuple[str, int, bool]:
    """(text, tokens generated with the stop token counted as TRL's completion length does, truncated).

    The text ends before `<|im_end|>`; pad ids are dropped; every other token, think tags included, is kept."""
    ids = list(ids)
    finished = eos_id in ids
    if finished:
        ids = ids[:ids.index(eos_id)]
    ids = [t for t in ids if t != tokenizer.pad_token_id]
    return tokenizer.decode(ids, skip_special_tokens=False), len(ids) + finished, not finished


# ---------------------------------------------------------------------------------------------------- scoring

def _share(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of a question with `c` right answers among `n` samples: 1 - C(n-c, k) / C(n, k)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _spread(accuracy: Sequence[float | None], rows: Sequence[dict], index: list[int]) -> dict:
    """`accuracy_se`: the standard error of the accuracy over questions (sd of each question's mean accuracy over
    its samples / sqrt(questions)), the evaluation set's own sampling error; `pass_at_k` for k = 1 and every
    question's sample count, when each was sampled more than once."""
    per_question = defaultdict(list)
    for i in index:
        if accuracy[i] is not None:
            per_question[rows[i].get("where"), rows[i]["prompt"][-1]["content"]].append(accuracy[i])
    means = [sum(v) / len(v) for v in per_question.values()]
    if len(means) < 2:
        return {"accuracy_se": None, "pass_at_k": {}}
    mean = sum(means) / len(means)
    se = math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1) / len(means))
    n = min(len(v) for v in per_question.values())
    ks = sorted({1, n}) if n > 1 else []
    return {"accuracy_se": se, "pass_at_k": {
        str(k): sum(pass_at_k(len(v), sum(x == 1.0 for x in v), k) for v in per_question.values()) / len(means)
        for k in ks}}


def score(completions: Sequence[str], rows: Sequence[dict], *, num_tokens: Sequence[int],
          truncated: Sequence[bool], num_samples: int = 8, leak_tokens: int = fidelity.LEAK_TOKENS) -> dict:
    """Metrics for `completions[i]` answering prompt row `rows[i]` (columns `answer`, `mode`, `level`,
    `source`, `prompt`), scored by the RLVR rewards. Pure: no model involved.

    Returns {"modes": {mode: {accuracy, mode_adherence, mean_tokens, truncated, n, unscored, leak, empty_think,
    continuation, by_level}}, "by_source": {source: {mode: {the same but by_level}}},
    "samples": [...]}. `accuracy` is over rows whose gold answer parses (`unscored` counts the others; None
    when none does); `mode_adherence` is the share the format reward passes among completions that ended
    before the token budget; `truncated` is the share that hit the budget; `by_level` holds the rows that have a level (GSM8K and MATH-500 rows have none).
    `accuracy_se` and `pass_at_k`: see `_spread` (rows of one question asked several times, sampled, share
    its `where` and text). Mode fidelity (posttrain.fidelity): `leak` is the share of /no_think completions that reason (None under
    /think), `empty_think` the share of /think ones with no reasoning (None under /no_think), `continuation` the
    share that repeat or continue the question. /auto_think rows (the model decides) add `think_rate`, the share
    that chose to think (`rewards.format.decide`; None in the other modes), overall and per level.
    """
    from rewards import get_reward
    from rewards.format import decide

    if not len(completions) == len(rows) == len(num_tokens) == len(truncated):
        raise ValueError("score: completions, rows, num_tokens and truncated must have the same length")
    rows = list(rows)
    columns = {"answer": [r["answer"] for r in rows], "mode": [r["mode"] for r in rows]}
    # One call scores every row: its deadline must fit all of them (the training default, `timeout`, would zero
    # the rows not done by then); a hostile row is still cut at `timeout`.
    accuracy = get_reward("accuracy", batch_timeout=EVAL_BATCH_TIMEOUT_S)(list(completions), **columns)
    gym = [row.get("gym") or "" for row in rows]
    if any(gym):  # reasoning-gym rows: their task's own scorer; right means its full score (not partial credit)
        scored = get_reward("gym_accuracy", batch_timeout=EVAL_BATCH_TIMEOUT_S)(list(completions), gym=gym)
        accuracy = [float(g >= 1.0) if spec else a for a, g, spec in zip(accuracy, scored, gym)]
    # A completion cut off by the token budget never finished its answer: not adherent, whatever its shape so
    # far (else a base model rambling for max_new_tokens without a think tag would "adhere" to /no_think).
    adherent = [None if ok is None else ok * (not cut)
                for ok, cut in zip(get_reward("format")(list(completions), **columns), truncated)]

    leak = [fidelity.leaks(c, n, leak_tokens) if r["mode"] == "no_think" else None
            for c, n, r in zip(completions, num_tokens, rows)]
    empty = [fidelity.empty_think(c) if r["mode"] == "think" else None for c, r in zip(completions, rows)]
    continued = [fidelity.continues_question(c, r["prompt"][-1]["content"]) for c, r in zip(completions, rows)]
    thought = [decide(c)[0] == "think" if r["mode"] == AUTO_MODE else None for c, r in zip(completions, rows)]

    def summary(index: list[int]) -> dict:
        return {
            "accuracy": _share(accuracy[i] for i in index),
            **_spread(accuracy, rows, index),
            "mode_adherence": _share(adherent[i] for i in index),
            "mean_tokens": sum(num_tokens[i] for i in index) / len(index),
            "truncated": sum(truncated[i] for i in index) / len(index),
            "n": len(index),
            "unscored": sum(accuracy[i] is None for i in index),
            "leak": _share(leak[i] for i in index),
            "empty_think": _share(empty[i] for i in index),
            "continuation": _share(continued[i] for i in index),
            "think_rate": _share(thought[i] for i in index),
        }

    by_mode, by_level, by_source = defaultdict(list), defaultdict(list), defaultdict(list)
    for i, row in enumerate(rows):
        by_mode[row["mode"]].append(i)
        by_source[row["source"], row["mode"]].append(i)
        if row["level"] is not None:
            by_level[row["mode"], row["level"]].append(i)

    def levels(mode: str) -> dict:
        return {level: {"accuracy": _share(accuracy[i] for i in index), "n": len(index),
                        "mean_tokens": sum(num_tokens[i] for i in index) / len(index),
                        "think_rate": _share(thought[i] for i in index)}
                for (m, level), index in sorted(by_level.items()) if m == mode}

    modes = {mode: {**summary(by_mode[mode]), "by_level": levels(mode)} for mode in ALL_MODES if mode in by_mode}
    sources = {
        source: {mode: summary(by_source[source, mode]) for mode in ALL_MODES if (source, mode) in by_source}
        for source in sorted({source for source, _ in by_source})
    }
    samples = [
        {"source": row["source"], "level": row["level"], "mode": row["mode"], "question": row["prompt"][-1]["content"],
         "answer": row["answer"], "completion": completions[i], "accuracy": accuracy[i], "adherent": adherent[i],
         "num_tokens": num_tokens[i], "leak": leak[i], "empty_think": empty[i], "continuation": continued[i]}
        for i, row in enumerate(rows[:num_samples])
    ]
    return {"modes": modes, "by_source": sources, "samples": samples}


def evaluate(model_path: str | Path, prompts: Dataset, *, max_new_tokens: int, batch_size: int,
             num_threads: int | None = 1, backend: str = "auto", num_samples: int = 8,
             sampling: dict | None = None, leak_tokens: int = fidelity.LEAK_TOKENS, num_generations: int = 1) -> dict:
    """Generate for every prompt row (posttrain.data's prompt format; pass `in_modes(...)` to ask each question
    in several modes), greedily or with `sampling` ({temperature, top_p, seed}) `num_generations` times per row, and
    `score` the completions (accuracy is then pass@1 averaged over the samples, beside pass@k). Adds a
    "generation" entry: backend, decoding, wall seconds (model loading included), new tokens per second."""
    path = check_checkpoint(model_path)
    if num_generations > 1 and not sampling:
        raise UserError(f"num_generations {num_generations}: several samples per question need temperature > 0 "
                        "(greedy decoding gives the same answer every time)")
    if num_generations > 1:
        prompts = prompts.select([i for i in range(len(prompts)) for _ in range(num_generations)])
    if max_new_tokens < 1 or batch_size < 1 or (num_threads is not None and num_threads < 1):
        raise UserError(f"max_new_tokens, batch_size and num_threads must be >= 1, "
                        f"got {max_new_tokens}, {batch_size}, {num_threads}")
    if not len(prompts):
        raise UserError("evaluation has no prompts")
    tokenizer, eos_id = _load_tokenizer(path)
    texts = tokenizer.apply_chat_template(list(prompts["prompt"]), add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]  # the template writes every token
    vllm = _use_vllm(backend)
    start = time.perf_counter()
    if vllm:
        generated = _generate_vllm(path, prompt_ids, max_new_tokens=max_new_tokens, eos_id=eos_id, sampling=sampling)
    else:
        generated = _generate_transformers(path, tokenizer, prompt_ids, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size, eos_id=eos_id, num_threads=num_threads,
                                           modes=list(prompts["mode"]), sampling=sampling)
    wall_s = time.perf_counter() - start
    completions, num_tokens, truncated = zip(*(decode_completion(tokenizer, ids, eos_id) for ids in generated))
    result = score(completions, prompts.to_list(), num_tokens=num_tokens, truncated=truncated,
                   num_samples=num_samples, leak_tokens=leak_tokens)
    result["generation"] = {
        "backend": "vllm" if vllm else "transformers", "decoding": sampling or "greedy",
        "num_generations": num_generations,
        "max_new_tokens": max_new_tokens, "completions": len(prompts),
        "wall_s": round(wall_s, 2), "new_tokens_per_s": round(sum(num_tokens) / wall_s, 1),
    }
    logger.info("eval: %d completions, %d new tokens in %.1f s", len(prompts), sum(num_tokens), wall_s)
    return result


# ------------------------------------------------------------------------------------------- drift & output

def load_baseline(path: str | Path) -> dict[str, float]:
    """Mean completion tokens per mode from a previous eval JSON; errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: baseline eval JSON not found")
    try:
        modes = json.loads(path.read_text())["modes"]
        return {mode: float(m["mean_tokens"]) for mode, m in modes.items()}
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path}: key 'modes.<mode>.mean_tokens' missing or not a number (not an eval JSON?)") from None


def length_drift(result: dict, baseline: dict[str, float], warn: float) -> dict[str, float | None]:
    """Mean tokens per mode now / in the baseline (None where the baseline lacks the mode or is 0)."""
    drift = {}
    for mode, m in result["modes"].items():
        before = baseline.get(mode)
        drift[mode] = round(m["mean_tokens"] / before, 3) if before else None
        if drift[mode] is not None and not 1 / warn <= drift[mode] <= warn:
            logger.warning("LENGTH DRIFT: /%s mean completion length %.1f -> %.1f tokens (x%.2f) since the baseline",
                           mode, before, m["mean_tokens"], drift[mode])
    return drift


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def flat_metrics(result: dict) -> dict[str, tuple[float, int]]:
    """An eval result flattened to {name: (value, n)}: accuracy, adherence, mean tokens, the mode-fidelity
    shares (leak, empty_think, continuation) and /auto_think's think rate per mode, accuracy (and think rate)
    per level, and the same per source when there are several. Metrics without a value (no scorable row) are
    left out. What `posttrain ablate` compares and the pipeline logs to its tracker."""
    found = {}

    def add(prefix: str, m: dict) -> None:
        for key, name in (("accuracy", "accuracy"), ("mode_adherence", "adherence"), ("mean_tokens", "tokens"),
                          ("leak", "leak"), ("empty_think", "empty_think"), ("continuation", "continuation"),
                          ("think_rate", "think_rate")):
            if m.get(key) is not None:
                found[f"{prefix}/{name}"] = (m[key], m["n"])

    for mode, m in result["modes"].items():
        add(mode, m)
        for level, lv in m.get("by_level", {}).items():
            for key in ("accuracy", "think_rate"):
                if lv.get(key) is not None:
                    found[f"{mode}/L{level}/{key}"] = (lv[key], lv["n"])
    if len(result["by_source"]) > 1:
        for source, per_mode in result["by_source"].items():
            for mode, m in per_mode.items():
                add(f"{source}/{mode}", m)
    return found


def to_markdown(result: dict) -> str:
    """The result as markdown: one row per mode, then accuracy per level and per source, /think vs /no_think."""
    drift = result.get("length_drift", {})
    lines = ["| mode | n | accuracy | ± SE | mode adherence | mean tokens | truncated | leak | empty think | "
             "continuation | think rate | length drift |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, m in result["modes"].items():
        ratio = drift.get(mode)
        lines.append(f"| /{mode} | {m['n']} | {_pct(m['accuracy'])} | {_pct(m.get('accuracy_se'))} | "
                     f"{_pct(m['mode_adherence'])} | "
                     f"{m['mean_tokens']:.1f} | {_pct(m['truncated'])} | {_pct(m.get('leak'))} | "
                     f"{_pct(m.get('empty_think'))} | {_pct(m.get('continuation'))} | {_pct(m.get('think_rate'))} | "
                     f"{'-' if ratio is None else f'x{ratio:.2f}'} |")
    modes = list(result["modes"])
    header = " | ".join(f"/{m} accuracy (n)" for m in modes)
    levels = sorted({level for m in result["modes"].values() for level in m["by_level"]}, key=int)
    if levels:  # per level also the length, and under /auto_think how often the model chose to think
        lines += ["", f"| level | {header} |", "|---|" + "---|" * len(modes)]
        for level in levels:
            cells = [result["modes"][m]["by_level"].get(level, {}) for m in modes]
            lines.append(f"| {level} | " + " | ".join(_level_cell(c) for c in cells) + " |")
    lines += ["", f"| source | {header} |", "|---|" + "---|" * len(modes)]
    for source, per_mode in result["by_source"].items():
        cells = [per_mode.get(m, {}) for m in modes]
        lines.append(f"| {source} | " + " | ".join(f"{_pct(c.get('accuracy'))} ({c.get('n', 0)})" for c in cells) + " |")
    passes = [f"/{mode} " + ", ".join(f"pass@{k} {_pct(v)}" for k, v in m["pass_at_k"].items())
              for mode, m in result["modes"].items() if m.get("pass_at_k")]
    lines += ["", *(f"Sampled: {line}" for line in passes)] if passes else []
    lines += ["", *(f"Skipped: {line}" for line in result.get("skipped_sources", []))]
    return "\n".join(lines).rstrip() + "\n"


def _level_cell(c: dict) -> str:
    if not c:
        return "- (0)"
    thinks = "" if c.get("think_rate") is None else f", thinks {_pct(c['think_rate'])}"
    return f"{_pct(c['accuracy'])} ({c['n']}), {c['mean_tokens']:.0f} tok{thinks}"


def main(argv):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if help_requested(argv, [EvalArguments], "posttrain eval"):
        return 0
    (args,) = parse_recipe([EvalArguments], argv)
    check_checkpoint(args.model_name_or_path)
    baseline = load_baseline(args.baseline) if args.baseline else None
    if args.length_drift_warn <= 1:
        raise UserError(f"recipe key 'length_drift_warn': must be > 1, got {args.length_drift_warn}")
    if not args.modes or len(set(args.modes)) < len(args.modes) or set(args.modes) - set(ALL_MODES):
        raise UserError(f"recipe key 'modes': expected distinct modes among think, no_think, {AUTO_MODE}; "
                        f"got {args.modes!r}")
    prompts, skipped = load_eval_prompts(args.datasets, seed=args.seed, modes=args.modes)
    result = evaluate(args.model_name_or_path, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                      num_threads=args.num_threads, backend=args.backend, num_samples=args.num_samples,
                      sampling=args.sampling(), leak_tokens=args.leak_tokens, num_generations=args.num_generations)
    result["skipped_sources"] = skipped
    if baseline is not None:
        result["length_drift"] = length_drift(result, baseline, args.length_drift_warn)
        result["baseline"] = args.baseline
    markdown = to_markdown(result)
    print(markdown)
    for path, text in ((args.output_json, json.dumps(result, indent=2)), (args.output_md, markdown)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    return 0
