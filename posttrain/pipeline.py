"""`posttrain pipeline --config recipes/tiny/pipeline.yaml`: the whole SmolLM3 recipe in one command.

pretrain -> midtrain -> sft -> dpo -> rlvr (-> optional merge), each stage a subprocess running its own
command on its own recipe (so a stage here is exactly what a user runs by hand), each starting from the
previous stage's checkpoint. After every stage the checkpoint is evaluated in both modes; at the end
`runs/<name>/report.md`, `report.json` and PNG plots are written.

Resume: a stage is recorded in `runs/<name>/pipeline_state.json` only once its command has exited 0 (and
each stage renames its output into place only when complete), so a re-run skips finished stages (also one
whose output is complete but unrecorded, the pipeline having stopped in its evaluation) and re-runs the
interrupted one, which resumes from the last complete checkpoint in its own `.partial`; `--from STAGE` redoes
STAGE and everything after it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.recipe import help_requested, parse_recipe

STAGE_ORDER = ("pretrain", "midtrain", "sft", "dpo", "rlvr", "merge")
# The kind of rows each post-training stage reads (a key of `posttrain.data.SOURCE_NAMES`).
# What a finished stage's output holds (posttrain stages and merge; pretrain)
COMPLETE = ("posttrain_run.json", "pretrain_state.json")
STAGE_ROWS = {"midtrain": "conversations", "sft": "conversations", "dpo": "preferences", "rlvr": "prompts"}


@dataclass
class PipelineArguments:
    """The pipeline recipe: which stage recipes to run, in order, and how to evaluate them."""

    name: str = field(default="tiny", metadata={"help": "Run name: outputs go to `<runs_dir>/<name>/`."})
    runs_dir: str = field(default="runs", metadata={"help": "Folder holding every run."})
    stages: dict = field(
        default_factory=dict,
        metadata={"help": "Stage name -> recipe path, in pipeline order (pretrain, midtrain, sft, dpo, rlvr). "
                  "A stage left out is skipped; the next one starts from the last checkpoint."},
    )
    stage_overrides: dict = field(
        default_factory=dict,
        metadata={"help": "Stage name -> {recipe key: value} applied on top of that stage's recipe "
                  "(e.g. a smaller max_steps for a quick run)."},
    )
    merge: dict = field(
        default_factory=dict,
        metadata={"help": "Optional final linear merge, e.g. {models: [rlvr, midtrain], weights: [0.7, 0.3]}: "
                  "stage names or paths. Empty: no merge."},
    )
    eval_datasets: list[dict] = field(
        default_factory=list,
        metadata={"help": "Evaluation prompt sources (posttrain.data source dicts); each prompt is asked in "
                  "both modes after every stage."},
    )
    eval_headline_source: str = field(
        default="arithmetic",
        metadata={"help": "The eval source whose per-mode figures fill the report's main table (report.json "
                  "`modes`): the task the pipeline trains on. Every source is also reported on its own."},
    )
    eval_max_new_tokens: int = field(default=160, metadata={"help": "Generation budget per evaluation answer."})
    eval_batch_size: int = field(default=64, metadata={"help": "Prompts per generation batch in evaluation."})
    eval_num_threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads for evaluation's generation (null: one per core). The pipeline evaluates "
                  "between stages, with the cores to itself: the tiny SFT checkpoint's 600 answers took 3.5-3.8 s "
                  "with 2 threads vs 4.7-5.4 s with 1 (`posttrain eval` keeps 1, for cores busy with training)."},
    )
    from_stage: str = field(default="", metadata={"help": "Redo this stage and all later ones (CLI: --from STAGE)."})
    report_to: str = field(
        default="none",
        metadata={"help": "Tracker for every stage (`trackio`: local-first, `pip install 'posttrain[trackio]'`; or "
                  "any transformers/accelerate integration), in one project named after the run, one run per stage "
                  "named after it. `none` keeps each stage recipe's own setting."},
    )


def stage_command(stage: str, recipe: str, model: str | None, output_dir: Path, overrides: dict) -> list[str]:
    module = ["pretrain.cli", "train"] if stage == "pretrain" else ["posttrain", stage]
    return [sys.executable, "-m", *module, *stage_argv(stage, recipe, model, output_dir, overrides)]


def stage_argv(stage: str, recipe: str, model: str | None, output_dir: Path, overrides: dict) -> list[str]:
    """A stage's arguments: its recipe, the model it starts from (the previous stage's output; a pipeline's first
    stage keeps its recipe's model_name_or_path), its output dir and the pipeline's overrides."""
    argv = ["--config", recipe]
    argv += ["--model_name_or_path", model] if model and stage != "pretrain" else []
    argv += ["--output_dir", str(output_dir)]
    for key, value in overrides.items():
        argv += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return argv


def _merge_command(spec: dict, outputs: dict[str, Path], output_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "posttrain", "merge", "--models", *(str(outputs.get(m, m)) for m in spec.get("models", []))]
    if spec.get("weights"):
        cmd += ["--weights", *(str(w) for w in spec["weights"])]
    return cmd + ["--output_dir", str(output_dir)]


def _load_json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _final_loss(stage_dir: Path) -> float | None:
    history = _load_json(stage_dir / "log_history.json", [])
    losses = [row.get("loss", row.get("train_loss")) for row in history if "loss" in row or "train_loss" in row]
    return losses[-1] if losses else None


def _log_metric(stage_dir: Path, key: str, window: int = 5) -> tuple[float | None, float | None]:
    """Mean of the first and of the last `window` logged values of a trainer metric (e.g. DPO's
    rewards/margins): one GRPO step scores a handful of prompts, so a single step's value is mostly noise."""
    values = [row[key] for row in _load_json(stage_dir / "log_history.json", []) if key in row]
    if not values:
        return None, None
    n = min(window, len(values))
    return sum(values[:n]) / n, sum(values[-n:]) / n


def _train(stage: str, cmd: list[str], out: Path) -> float:
    """Run a stage's command; its wall time. A stage redone (--from) keeps its old output aside until it
    succeeds; an interrupted one resumes from its own `<out>.partial` on the next run."""
    previous = out.with_name(out.name + ".previous")
    if out.is_dir():  # stages refuse to overwrite
        shutil.rmtree(previous, ignore_errors=True)
        out.rename(previous)
    print(f"[pipeline] {stage}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if code != 0:
        if previous.is_dir() and not out.exists():
            previous.rename(out)
        raise UserError(f"stage {stage} failed (exit {code}); finished stages are kept, re-run to resume")
    shutil.rmtree(previous, ignore_errors=True)
    return round(time.perf_counter() - start, 1)


def overrides_for(args: PipelineArguments, stage: str) -> dict:
    """The keys the pipeline sets on a stage: its tracker (when `report_to` is set), then the stage's own
    `stage_overrides`, which win."""
    tracking = {"report_to": args.report_to, "project": args.name, "run_name": stage} if args.report_to != "none" else {}
    return {**tracking, **args.stage_overrides.get(stage, {})}


def check_stage_recipes(args: PipelineArguments, run_dir: Path) -> None:
    """Every post-training stage's recipe, under its overrides, parses and its data loads (`check_stage_recipe`):
    a typo in the DPO recipe, a missing file or an unreachable Hub dataset stops the pipeline here, not after the
    stages before it have run for minutes."""
    for stage, recipe in args.stages.items():
        if stage in STAGE_ROWS:
            check_stage_recipe(stage, recipe, overrides_for(args, stage), run_dir / stage,
                               where=f"stage {stage} ({recipe})")


def check_stage_recipe(stage: str, recipe: str, overrides: dict, output_dir: Path, where: str) -> None:
    """The stage's recipe under `overrides` parses as its stage will parse it (keys, types, ranges, TRL's own
    checks) and its `datasets` can be loaded; errors are prefixed with `where`."""
    from posttrain import data

    argv = stage_argv(stage, recipe, None, output_dir, overrides)
    try:
        script = importlib.import_module(f"posttrain.{stage}").parse(argv)[0]
        data.check_available(script.datasets, data.SOURCE_NAMES[STAGE_ROWS[stage]])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def run(args: PipelineArguments) -> dict:
    """The whole pipeline: every check that can fail fast first, then the stages with their evaluations, then the
    report. Split in these three so each reads on its own: which stages run (`run_stages`), how a checkpoint is
    scored (`evaluate_stage`), and what is reported (`write_report`)."""
    order = stage_order(args)
    run_dir = Path(args.runs_dir) / args.name
    check_stage_recipes(args, run_dir)
    eval_prompts, skipped_eval = _load_eval_prompts(args)
    run_dir.mkdir(parents=True, exist_ok=True)
    outputs, state = run_stages(args, order, run_dir, eval_prompts)
    return write_report(args, order, outputs, state, run_dir, skipped_eval)


def stage_order(args: PipelineArguments) -> list[str]:
    """The stages this pipeline runs, in order; refuses an unknown stage, a missing recipe file or a `--from`
    outside them before anything runs."""
    unknown = [s for s in args.stages if s not in STAGE_ORDER[:-1]]
    if unknown:
        raise UserError(f"pipeline recipe: unknown stage {unknown[0]!r} in 'stages' (known: {', '.join(STAGE_ORDER[:-1])})")
    for stage, recipe in args.stages.items():
        if not Path(recipe).is_file():
            raise UserError(f"pipeline recipe: stages.{stage}: recipe file {recipe} not found")
    order = [s for s in STAGE_ORDER if s in args.stages or (s == "merge" and args.merge)]
    if args.from_stage and args.from_stage not in order:
        raise UserError(f"--from {args.from_stage!r}: not a stage of this pipeline ({', '.join(order)})")
    return order


def _load_eval_prompts(args: PipelineArguments):
    """The evaluation prompts (None without `eval_datasets`) and the sources skipped; loaded before any stage runs,
    so a headline source missing from them stops the pipeline at once."""
    from posttrain.evaluate import load_eval_prompts

    eval_prompts, skipped_eval = load_eval_prompts(args.eval_datasets, seed=0) if args.eval_datasets else (None, [])
    if eval_prompts is not None and args.eval_headline_source not in set(eval_prompts["source"]):
        raise UserError(f"pipeline recipe: eval_headline_source {args.eval_headline_source!r} is not a source of "
                        f"eval_datasets ({', '.join(sorted(set(eval_prompts['source'])))})")
    return eval_prompts, skipped_eval


def run_stages(args: PipelineArguments, order: list[str], run_dir: Path, eval_prompts) -> tuple[dict, dict]:
    """Orchestration: each stage in order is skipped (recorded done), adopted (output complete but unrecorded) or
    run, then evaluated; the state file is written after each, so a re-run resumes at the first stage not done.
    Returns each stage's output directory and the state."""
    state_path = run_dir / "pipeline_state.json"
    state = _load_json(state_path, {})
    redo = order[order.index(args.from_stage):] if args.from_stage else []
    for stage in redo:
        state.pop(stage, None)

    outputs: dict[str, Path] = {}
    previous_model = None
    for stage in order:
        out = run_dir / stage
        outputs[stage] = out
        if stage in state and out.is_dir():
            print(f"[pipeline] {stage}: done in an earlier run, skipped ({out})", flush=True)
        else:
            state.pop(stage, None)
            state[stage] = {"wall_s": _run_stage(args, stage, out, outputs, previous_model, adopt=stage not in redo)}
            if eval_prompts is not None:
                evaluate_stage(args, stage, out, eval_prompts, previous_model)
            state_path.write_text(json.dumps(state, indent=2))
        previous_model = str(out)
    return outputs, state


def _run_stage(args: PipelineArguments, stage: str, out: Path, outputs: dict, previous_model: str | None,
               adopt: bool) -> float:
    """Trains one stage (its wall time), or, with `adopt`, takes the complete output of an earlier run that
    stopped after the stage, before recording it (e.g. in evaluation), without retraining."""
    record = next((out / f for f in COMPLETE if (out / f).is_file()), None) if adopt else None
    if record is not None:
        print(f"[pipeline] {stage}: trained in an earlier run, not retrained ({out})", flush=True)
        return _load_json(record, {}).get("wall_s", 0.0)
    if stage == "merge":
        cmd = _merge_command(args.merge, outputs, out)
    else:
        cmd = stage_command(stage, args.stages[stage], previous_model, out, overrides_for(args, stage))
    return _train(stage, cmd, out)


def evaluate_stage(args: PipelineArguments, stage: str, out: Path, eval_prompts, previous_model: str | None) -> None:
    """Evaluation: the stage's checkpoint in both modes, written to `<out>/eval.json`, with the length drift per
    mode against the previous stage's evaluation (the reward-hacking monitor)."""
    from posttrain.evaluate import evaluate, length_drift, load_baseline

    print(f"[pipeline] {stage}: evaluating {len(eval_prompts)} prompts", flush=True)
    start = time.perf_counter()
    result = evaluate(str(out), eval_prompts, max_new_tokens=args.eval_max_new_tokens, batch_size=args.eval_batch_size,
                      num_threads=args.eval_num_threads)
    result["eval_wall_s"] = round(time.perf_counter() - start, 1)
    if previous_model and (Path(previous_model) / "eval.json").is_file():
        result["length_drift"] = length_drift(result, load_baseline(Path(previous_model) / "eval.json"), 1.5)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    if "trackio" in str(overrides_for(args, stage).get("report_to", "")).split(","):  # a stage's own override wins
        track_eval(args.name, stage, result)


def track_eval(project: str, stage: str, result: dict) -> None:
    """The stage's evaluation into the trackio run its training logged to (reopened: `resume="allow"`), as
    `eval/<metric>` (`flat_metrics`: accuracy, adherence, tokens and fidelity per mode, accuracy per level), so
    the dashboard shows what each stage did to the model beside its losses."""
    import trackio

    from posttrain.evaluate import flat_metrics

    trackio.init(project=project, name=stage, resume="allow")
    trackio.log({f"eval/{name}": value for name, (value, _) in flat_metrics(result).items()})
    trackio.finish()


def write_report(args: PipelineArguments, order: list[str], outputs: dict, state: dict, run_dir: Path,
                 skipped_eval: list) -> dict:
    """Report: `report.json`, then `report.md` and the plots (`posttrain.report`), from every stage's state,
    training log and eval.json; the summary is returned."""
    from posttrain import report

    stages_report = {stage: _stage_entry(args, stage, outputs[stage], state[stage]["wall_s"]) for stage in order}
    summary = {"name": args.name, "headline_source": args.eval_headline_source, "stages": stages_report,
               "total_wall_s": round(sum(e["wall_s"] for e in stages_report.values()), 1),
               "skipped_eval_sources": skipped_eval}
    (run_dir / "report.json").write_text(json.dumps(summary, indent=2))
    report.write(summary, outputs, run_dir)
    print(f"[pipeline] report: {run_dir / 'report.md'}", flush=True)
    return summary


def _stage_entry(args: PipelineArguments, stage: str, out: Path, wall_s: float) -> dict:
    """One stage's report entry: wall times, final loss, the headline source's figures per mode, and the
    stage's own training signals (DPO's reward margin, RLVR's per-mode accuracy reward and length)."""
    result = _load_json(out / "eval.json", {})
    entry = {"wall_s": wall_s, "final_loss": _final_loss(out), "eval_wall_s": result.get("eval_wall_s")}
    headline = result.get("by_source", {}).get(args.eval_headline_source, {})
    entry["modes"] = {  # by_level: only the task's prompts have levels
        mode: {**{k: m.get(k) for k in ("accuracy", "mode_adherence", "mean_tokens", "n", "leak", "empty_think",
                                        "continuation")},
               "by_level": result["modes"][mode].get("by_level")}
        for mode, m in headline.items()
    }
    entry["by_source"] = result.get("by_source", {})
    entry["length_drift"] = result.get("length_drift")
    if stage == "dpo":
        entry["reward_margin_first_last"] = _log_metric(out, "rewards/margins")
    if stage == "rlvr":
        # per mode: the all-rows mean swings with each batch's share of /think prompts (/no_think ones score ~0)
        entry["think_accuracy_reward_first_last"] = _log_metric(out, "rewards/accuracy/think")
        entry["no_think_length_first_last"] = _log_metric(out, "completions/no_think/mean_length")
    return entry


def main(argv):
    argv = ["--from_stage" if a == "--from" else a for a in argv]
    if help_requested(argv, [PipelineArguments], "posttrain pipeline"):
        return 0
    (args,) = parse_recipe([PipelineArguments], argv)
    run(args)
