"""`posttrain ablate --config ablation.yaml`: one change at a time, several seeds, gains told apart from noise.

An ablation is a stage recipe (`base`), arms that each change named keys of it (the first arm is the baseline,
usually `{}`; an arm `untrained` is the starting checkpoint evaluated as it is: "does this stage help at all?"),
and seeds. Every arm x seed is the stage's own command, exactly what a user would run by hand:
  posttrain <stage> --config <base> [--model_name_or_path M] --output_dir <runs_dir>/<name>/<arm>/seed<S>
                    --seed <S> --<key> <value> ...
then `posttrain eval` (the recipe's `eval` keys) on its checkpoint into `<checkpoint>/eval.json`. The seed is the
stage's `seed`, which sets both the model's training randomness and the data order (the mixture's shuffle, the
modes drawn, TRL's sampler).

Resume: a run whose checkpoint is complete (`posttrain_run.json`) is not retrained, one with an `eval.json` is not
re-evaluated, and an interrupted stage resumes from its own `.partial` checkpoint; a failed run is reported after
the others have finished. `parallel: N` runs N at a time, each with cores/N threads.

Results: `ablation.json` (per arm and seed: metrics, wall times, the exact recipe the stage recorded) and
`ablation.md`: per metric the baseline's mean, its spread over seeds and the evaluation's own sampling error, and
per arm the paired difference from the baseline (same seeds) with a 95% t interval over seeds and a verdict:
"better"/"worse" when the interval excludes 0 AND the difference is larger than the evaluation set's own noise
(for a share: 1.96 x the sampling error of a difference between two evaluations of that many questions, which
overstates it for two models that agree on most questions; for tokens: 1% of the baseline's length), else
"within noise" (tokens: "longer"/"shorter"; for leak, empty-think and continuation shares lower is better). Why
both: the baseline is often one evaluation for every seed (an `untrained` arm), so an arm that loses the same
single question at every seed has a zero-width interval; one question of 300 is not a finding.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.outputs import RUN_RECORD, write_json_atomic, write_text_atomic
from common.recipe import help_requested, parse_recipe
from posttrain.pipeline import STAGE_ROWS, check_stage_recipe, stage_command

LOWER_IS_BETTER = ("leak", "empty_think", "continuation")  # shares of broken completions
UNTRAINED = "untrained"  # the arm that evaluates the starting checkpoint as it is
# Two-sided 95% quantiles of Student's t by degrees of freedom (1..20); the normal 1.96 beyond 30, 2.04 between.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
       2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)


@dataclass
class AblationArguments:
    """The ablation recipe."""

    stage: str = field(metadata={"help": "The stage every run trains: midtrain, sft, dpo or rlvr."})
    base: str = field(metadata={"help": "The stage recipe every arm starts from (its keys, data, budget)."})
    arms: dict = field(metadata={"help": "Arm name -> {recipe key: value} changed on top of `base`, or `untrained`: "
                                 "the starting checkpoint, evaluated without training. The first arm is the "
                                 "baseline every other arm is compared with (usually `baseline: {}`)."})
    eval: dict = field(metadata={"help": "`posttrain eval` recipe keys (datasets, max_new_tokens, temperature, ...) "
                                 "every checkpoint is scored with."})
    name: str = field(default="ablation", metadata={"help": "Outputs go to `<runs_dir>/<name>/`."})
    runs_dir: str = field(default="runs/ablations", metadata={"help": "Folder holding every ablation."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The checkpoint every run starts from (default: the base recipe's)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2],
                             metadata={"help": "Training seeds; each arm runs once per seed. Three or more give an "
                                       "interval; one gives figures without a verdict."})
    primary_metric: str = field(
        default="think/accuracy",
        metadata={"help": "The metric of each arm's one-word verdict in ablation.md's first table (every metric is "
                  "compared below it): `<mode>/<accuracy|adherence|tokens>`, `<mode>/L<level>/accuracy`, or "
                  "`<source>/<mode>/...` when the evaluation has several sources."})
    parallel: int = field(default=1, metadata={"help": "Runs at a time (each gets cores/parallel threads)."})


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, sd


def eval_floor(metric: str, arm_mean: float, baseline_mean: float, n: int | None) -> float:
    """The smallest difference the evaluation itself can tell apart (see the module docstring); 0 without `n`."""
    if metric.endswith("/tokens"):
        return 0.01 * abs(baseline_mean)
    if not n:
        return 0.0
    return 1.96 * math.sqrt((arm_mean * (1 - arm_mean) + baseline_mean * (1 - baseline_mean)) / n)


def paired(arm: dict[int, float], baseline: dict[int, float], metric: str, n: int | None = None) -> dict:
    """The arm minus the baseline on the seeds both ran: mean difference, 95% t interval over seeds, the
    evaluation's noise floor (`eval_floor`, `n` questions per evaluation), verdict."""
    shared = [s for s in sorted(arm) if s in baseline]
    diffs = [arm[s] - baseline[s] for s in shared]
    if not diffs:
        return {"diff": None, "ci": None, "seeds": 0, "verdict": "no shared seed"}
    mean, sd = _mean_sd(diffs)
    if sd is None:
        return {"diff": mean, "ci": None, "seeds": 1, "verdict": "one seed: no verdict"}
    t = T95[len(diffs) - 2] if len(diffs) <= 21 else (2.04 if len(diffs) <= 31 else 1.96)
    half = t * sd / math.sqrt(len(diffs))
    up, down = {"tokens": ("longer", "shorter"), **dict.fromkeys(LOWER_IS_BETTER, ("worse", "better"))}.get(
        metric.rpartition("/")[2], ("better", "worse"))
    floor = eval_floor(metric, sum(arm[s] for s in shared) / len(shared),
                       sum(baseline[s] for s in shared) / len(shared), n)
    beyond = abs(mean) > floor  # the evaluation's own noise, which the seeds' interval does not see
    verdict = up if beyond and mean - half > 0 else down if beyond and mean + half < 0 else "within noise"
    return {"diff": mean, "ci": [mean - half, mean + half], "eval_floor": floor, "seeds": len(diffs), "verdict": verdict}


def summarize(runs: dict[str, dict[int, dict]], primary_metric: str) -> dict:
    """Per arm: mean, seed spread (sd) and evaluation sampling error (binomial, for shares) of every metric, and
    the paired comparison with the first arm; `runs[arm][seed]["metrics"]` as `metrics` returns it."""
    baseline_name = next(iter(runs))
    per_metric = {}
    for arm, by_seed in runs.items():
        for seed, run in by_seed.items():
            for name, (value, n) in run["metrics"].items():
                per_metric.setdefault(name, {}).setdefault(arm, {})[seed] = (value, n)
    summary = {}
    for arm in runs:
        entry = {}
        for name, arms in per_metric.items():
            if arm not in arms:
                continue
            values = {s: v for s, (v, _) in arms[arm].items()}
            mean, sd = _mean_sd(list(values.values()))
            n = min(n for _, n in arms[arm].values())
            se = None if name.endswith("/tokens") else math.sqrt(max(mean * (1 - mean), 0.0) / n)
            entry[name] = {"mean": mean, "sd": sd, "eval_se": se, "n": n, "seeds": len(values)}
            if arm != baseline_name and baseline_name in arms:
                entry[name]["vs_baseline"] = paired(values, {s: v for s, (v, _) in arms[baseline_name].items()}, name, n)
        verdict = entry.get(primary_metric, {}).get("vs_baseline", {}).get("verdict", "baseline" if arm == baseline_name else "-")
        summary[arm] = {"verdict": verdict, "metrics": entry}
    return summary


def _fmt(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None:
        return "-"
    if metric.endswith("/tokens"):
        return f"{value:+.1f}" if signed else f"{value:.1f}"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}%"


def _diff_cell(vs: dict, metric: str) -> str:
    """"+3.0 [+1.2, +4.8] better": the paired difference, its interval where there is one, and the verdict."""
    ci = f" [{_fmt(vs['ci'][0], metric, True)}, {_fmt(vs['ci'][1], metric, True)}]" if vs.get("ci") else ""
    return f"{_fmt(vs.get('diff'), metric, True)}{ci}"


def _changes(arm) -> str:
    if arm == UNTRAINED:
        return "the starting checkpoint, not trained"
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in arm.items()) or "-"


def to_markdown(args: AblationArguments, summary: dict, runs: dict) -> str:
    """Two tables: each arm's verdict on the primary metric, then every metric: the baseline's mean, seed sd and
    evaluation sampling error, and each arm's paired difference [95% interval] and verdict."""
    arms = list(summary)
    pm = args.primary_metric
    lines = [f"# Ablation `{args.name}`: posttrain {args.stage}, base {args.base}, seeds {args.seeds}", "",
             f"Verdicts on {pm} (paired over seeds against `{arms[0]}`, 95% t interval; percentage points for "
             "shares; better or worse only when the interval excludes 0 and the difference exceeds the evaluation's "
             "own noise, see posttrain/ablate.py):", "", "| arm | changes | mean | seed sd | diff [95% CI] | verdict | train s / run |",
             "|---|---|---|---|---|---|---|"]
    for arm in arms:
        m = summary[arm]["metrics"].get(pm, {})
        diff = _diff_cell(m.get("vs_baseline", {}), pm)
        walls = [r["train_wall_s"] for r in runs[arm].values() if r.get("train_wall_s")]
        wall = f"{sum(walls) / len(walls):.0f}" if walls else "-"
        changes = _changes(args.arms[arm])
        lines.append(f"| {arm} | {changes} | {_fmt(m.get('mean'), pm)} | {_fmt(m.get('sd'), pm)} | "
                     f"{diff if arm != arms[0] else '-'} | {summary[arm]['verdict']} | {wall} |")
    metric_names = sorted(summary[arms[0]]["metrics"])
    lines += ["", "Every metric (baseline: mean ± seed sd, eval SE = the evaluation set's own binomial sampling "
              "error; arms: paired diff [95% CI] verdict):", "",
              "| metric | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name in metric_names:
        base = summary[arms[0]]["metrics"][name]
        cells = [_fmt(base["mean"], name) + (f" ± {_fmt(base['sd'], name)}" if base["sd"] is not None else "")
                 + (f" (eval SE {_fmt(base['eval_se'], name)})" if base["eval_se"] is not None else "")]
        for arm in arms[1:]:
            vs = summary[arm]["metrics"].get(name, {}).get("vs_baseline")
            if not vs or vs["diff"] is None:
                cells.append("-")
                continue
            cells.append(f"{_diff_cell(vs, name)} {vs['verdict']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- running

def check(args: AblationArguments, config: str, run_dir: Path) -> None:
    """Everything that can be refused before the first run: the recipe's own keys, then every arm's stage recipe
    as the stage will parse it (an unknown key names the arm) and the evaluation recipe."""
    from posttrain import data
    from posttrain.evaluate import EvalArguments

    if args.stage not in STAGE_ROWS:
        raise UserError(f"{config}: recipe key 'stage': {args.stage!r} is not one of {', '.join(STAGE_ROWS)}")
    if not Path(args.base).is_file():
        raise UserError(f"{config}: recipe key 'base': recipe file {args.base} not found")
    if not args.arms or not all(isinstance(a, str) and (isinstance(v, dict) or v == UNTRAINED)
                                for a, v in args.arms.items()):
        raise UserError(f"{config}: recipe key 'arms': a mapping of arm name -> {{recipe key: value}} or "
                        f"'{UNTRAINED}', the first the baseline")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"{config}: recipe key 'seeds': a non-empty list of distinct integers, got {args.seeds}")
    for arm, changes in args.arms.items():
        if changes == UNTRAINED:
            continue
        if "seed" in changes or "output_dir" in changes:
            raise UserError(f"{config}: arms.{arm}: 'seed' and 'output_dir' are set per run by the ablation")
        check_stage_recipe(args.stage, args.base, _overrides(args, changes, 0), run_dir / arm,
                           where=f"{config}: arms.{arm} ({args.base})")
    try:
        (evaluation,) = parse_recipe([EvalArguments], _eval_argv(args, "checkpoint"))
        data.check_available(evaluation.datasets, data.SOURCE_NAMES["prompts"])
    except UserError as e:
        raise UserError(f"{config}: eval: {e}") from None


def starting_checkpoint(args: AblationArguments) -> str:
    """The checkpoint every run starts from: the ablation's `model_name_or_path`, else the base recipe's."""
    from common.recipe import load_yaml

    return args.model_name_or_path or str(load_yaml(args.base).get("model_name_or_path", ""))


def _overrides(args: AblationArguments, changes: dict, seed: int) -> dict:
    model = {"model_name_or_path": args.model_name_or_path} if args.model_name_or_path else {}
    return {**model, **changes, "seed": seed}


def _eval_argv(args: AblationArguments, checkpoint: str) -> list[str]:
    argv = ["--model_name_or_path", checkpoint]
    for key, value in args.eval.items():
        argv += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return argv


def _call(cmd: list[str], log: Path, threads: int) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    with log.open("a") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise UserError(f"{' '.join(cmd[2:4])} failed (exit {code}); its output: {log}")


def run_one(args: AblationArguments, run_dir: Path, arm: str, seed: int, threads: int) -> dict:
    """One arm x seed: train unless complete, evaluate unless evaluated; its metrics, wall times and recipe. The
    `untrained` arm evaluates the starting checkpoint once (into `<arm>/start`: the evaluation is the same for every
    seed) and every seed reads that."""
    untrained = args.arms[arm] == UNTRAINED
    out = run_dir / arm / ("start" if untrained else f"seed{seed}")
    log = out.with_name(out.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = starting_checkpoint(args) if untrained else str(out)
    if untrained:
        out.mkdir(exist_ok=True)
    elif not (out / RUN_RECORD).is_file():
        print(f"[ablate] {arm} seed {seed}: training ({log})", flush=True)
        _call(stage_command(args.stage, args.base, None, out, _overrides(args, args.arms[arm], seed)), log, threads)
    evaluation = out / "eval.json"
    if not evaluation.is_file():
        print(f"[ablate] {arm} seed {seed}: evaluating", flush=True)
        pending = out.with_name(out.name + ".eval.partial.json")
        _call([sys.executable, "-m", "posttrain", "eval", *_eval_argv(args, checkpoint), "--output_json", str(pending)],
              log, threads)
        os.replace(pending, evaluation)
    from posttrain.evaluate import flat_metrics

    record = {} if untrained else json.loads((out / RUN_RECORD).read_text())
    result = json.loads(evaluation.read_text())
    return {"metrics": flat_metrics(result), "train_wall_s": record.get("wall_s"),
            "eval_wall_s": result["generation"]["wall_s"], "recipe": record.get("recipe")}


def run(args: AblationArguments, config: str) -> dict:
    """Every arm x seed (resuming), then ablation.json and ablation.md; failed runs are named after the others
    have finished, and the results of those that did are still written."""
    run_dir = Path(args.runs_dir) / args.name
    check(args, config, run_dir)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    # the untrained arm is evaluated once (its first seed's job) and counts for every seed
    jobs = [(arm, seed) for arm in args.arms for seed in args.seeds[:1 if args.arms[arm] == UNTRAINED else None]]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {job: pool.submit(run_one, args, run_dir, *job, threads) for job in jobs}
    runs, failed = {arm: {} for arm in args.arms}, []
    for (arm, seed), future in futures.items():
        try:
            seeds = args.seeds if args.arms[arm] == UNTRAINED else [seed]
            runs[arm].update(dict.fromkeys(seeds, future.result()))
        except UserError as e:
            failed.append(f"{arm} seed {seed}: {e}")
    runs = {arm: by_seed for arm, by_seed in runs.items() if by_seed}
    summary = summarize(runs, args.primary_metric) if runs else {}
    result = {"name": args.name, "stage": args.stage, "base": args.base, "seeds": args.seeds,
              "primary_metric": args.primary_metric, "arms": args.arms, "summary": summary, "failed": failed,
              "runs": {arm: {str(s): r for s, r in by_seed.items()} for arm, by_seed in runs.items()},
              "wall_s": round(time.perf_counter() - start, 1)}
    write_json_atomic(run_dir / "ablation.json", result)
    if runs and next(iter(args.arms)) in runs:
        write_text_atomic(run_dir / "ablation.md", to_markdown(args, summary, runs))
        print((run_dir / "ablation.md").read_text(), flush=True)
    if failed:
        raise UserError(f"{len(failed)} of {len(jobs)} runs failed ({'; '.join(failed)}); finished runs are kept, "
                        "re-run to resume")
    return result


def main(argv):
    if help_requested(argv, [AblationArguments], "posttrain ablate"):
        return 0
    (args,) = parse_recipe([AblationArguments], argv)
    config = argv[argv.index("--config") + 1] if "--config" in argv else "ablation recipe"
    run(args, config)
    return 0
