"""The pipeline's report: `report.md` (one table per question a stage answers) and PNG plots
(loss per stage; accuracy and mean completion length per stage and mode)."""

from __future__ import annotations

import json
from pathlib import Path

from common.template import MODES


def _fmt(value, pct=False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else (f"{value:.3g}" if isinstance(value, float) else str(value))


def _markdown(summary: dict) -> str:
    stages = summary["stages"]
    skipped = [f"Skipped evaluation source: {line}" for line in summary.get("skipped_eval_sources", [])]
    lines = [f"# posttrain pipeline report: {summary['name']}", "",
             f"Total training wall time: {summary['total_wall_s']} s", "", *skipped, *([""] if skipped else []),
             f"Per mode on {summary['headline_source']} (held-out prompts, each asked in both modes):", "",
             "| stage | wall s | final loss | /think acc | /no_think acc | /think adherence | /no_think adherence "
             "| /think tokens | /no_think tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in stages.items():
        m = e["modes"]
        t, n = m.get("think", {}), m.get("no_think", {})
        lines.append(
            f"| {name} | {e['wall_s']} | {_fmt(e['final_loss'])} | {_fmt(t.get('accuracy'), True)} | "
            f"{_fmt(n.get('accuracy'), True)} | {_fmt(t.get('mode_adherence'), True)} | "
            f"{_fmt(n.get('mode_adherence'), True)} | {_fmt(t.get('mean_tokens'))} | {_fmt(n.get('mean_tokens'))} |"
        )
    levels = sorted({lvl for e in stages.values() for m in e["modes"].values() for lvl in (m.get("by_level") or {})},
                    key=lambda x: int(x))
    if levels:
        lines += ["", "## Accuracy per difficulty level (/think vs /no_think)", "",
                  "| stage | " + " | ".join(f"level {lvl}" for lvl in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        for name, e in stages.items():
            cells = []
            for lvl in levels:
                t = (e["modes"].get("think", {}).get("by_level") or {}).get(lvl, {})
                n = (e["modes"].get("no_think", {}).get("by_level") or {}).get(lvl, {})
                cells.append(f"{_fmt(t.get('accuracy'), True)} / {_fmt(n.get('accuracy'), True)}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Mode fidelity (shares of completions; lower is better)", "",
              "| stage | /no_think leak | /think empty think | continuation /think / /no_think |", "|---|---|---|---|"]
    for name, e in stages.items():
        t, n = e["modes"].get("think", {}), e["modes"].get("no_think", {})
        lines.append(f"| {name} | {_fmt(n.get('leak'), True)} | {_fmt(t.get('empty_think'), True)} | "
                     f"{_fmt(t.get('continuation'), True)} / {_fmt(n.get('continuation'), True)} |")
    sources = sorted({s for e in stages.values() for s in e.get("by_source", {})})
    if sources:
        lines += ["", "## Per source: accuracy /think / /no_think (mode adherence /think / /no_think)", "",
                  "| stage | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
        for name, e in stages.items():
            cells = []
            for s in sources:
                per = e.get("by_source", {}).get(s, {})
                acc, adh = (" / ".join(_fmt((per.get(m) or {}).get(k), True) for m in MODES)
                            for k in ("accuracy", "mode_adherence"))
                cells.append(f"{acc} ({adh})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    extra = []
    if "dpo" in stages and stages["dpo"].get("reward_margin_first_last", (None, None))[0] is not None:
        first, last = stages["dpo"]["reward_margin_first_last"]
        extra.append(f"- DPO chosen-vs-rejected reward margin: {first:.3f} (first 5 logs) -> {last:.3f} (last 5 logs)")
    if "rlvr" in stages and stages["rlvr"].get("think_accuracy_reward_first_last", (None, None))[0] is not None:
        first, last = stages["rlvr"]["think_accuracy_reward_first_last"]
        extra.append(f"- RLVR accuracy reward on /think prompts: {first:.3f} (first 5 steps) -> {last:.3f} (last 5 steps)")
        first, last = stages["rlvr"].get("no_think_length_first_last", (None, None))
        if first is not None:
            extra.append(f"- RLVR /no_think completion length: {first:.1f} tokens (first 5 steps) -> {last:.1f} (last 5)")
    if extra:
        lines += ["", "## Training signals", "", *extra]
    lines += ["", "![loss](loss.png)", "", "![accuracy and length](eval.png)", ""]
    return "\n".join(lines)


def _plots(summary: dict, outputs: dict[str, Path], run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(summary["stages"])
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 2.8), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        path = outputs[stage] / "log_history.json"
        history = json.loads(path.read_text()) if path.is_file() else []
        points = [(row["step"], row["loss"]) for row in history if "loss" in row and "step" in row]
        if points:
            ax.plot(*zip(*points))
        ax.set_title(stage)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)

    fig, (acc_ax, len_ax) = plt.subplots(1, 2, figsize=(10, 3.2))
    for mode in MODES:
        acc = [summary["stages"][s]["modes"].get(mode, {}).get("accuracy") for s in stages]
        tokens = [summary["stages"][s]["modes"].get(mode, {}).get("mean_tokens") for s in stages]
        acc_ax.plot(stages, [a if a is not None else float("nan") for a in acc], marker="o", label=f"/{mode}")
        len_ax.plot(stages, [t if t is not None else float("nan") for t in tokens], marker="o", label=f"/{mode}")
    acc_ax.set_title("accuracy")
    len_ax.set_title("mean completion tokens")
    for ax in (acc_ax, len_ax):
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "eval.png", dpi=100)
    plt.close(fig)


def write(summary: dict, outputs: dict[str, Path], run_dir: Path) -> None:
    (run_dir / "report.md").write_text(_markdown(summary))
    _plots(summary, outputs, run_dir)
