"""`posttrain ablate`: the statistics on hand-made numbers, the refusals, and a two-arm, two-seed ablation of the
real SFT stage on the tiny random model, end to end through the CLI (training, `posttrain eval`, resume)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.errors import UserError
from common.recipe import parse_recipe
from posttrain import ablate
from posttrain.evaluate import flat_metrics

ROOT = Path(__file__).resolve().parents[1]


def test_paired_difference_interval_and_verdicts():
    base = {0: 0.50, 1: 0.60, 2: 0.55}
    # consistent +10 points on every seed (diffs 0.10, 0.11, 0.09): the interval excludes 0
    better = ablate.paired({0: 0.60, 1: 0.71, 2: 0.64}, base, "think/accuracy")
    assert better["verdict"] == "better" and better["seeds"] == 3
    assert better["diff"] == pytest.approx(0.10)
    half = 4.303 * 0.01 / math.sqrt(3)  # t(0.975, df 2) x sd / sqrt(n)
    assert better["ci"] == pytest.approx([0.10 - half, 0.10 + half])
    # the same mean gain with a spread as large as the gain: within noise
    noisy = ablate.paired({0: 0.70, 1: 0.55, 2: 0.75}, base, "think/accuracy")
    assert noisy["diff"] == pytest.approx(0.1166, abs=1e-3) and noisy["verdict"] == "within noise"
    assert ablate.paired({0: 0.40, 1: 0.49, 2: 0.46}, base, "think/accuracy")["verdict"] == "worse"
    assert ablate.paired({0: 90.0, 1: 91.0, 2: 92.0}, {0: 50.0, 1: 50.0, 2: 51.0}, "think/tokens")["verdict"] == "longer"
    # a broken-completion share that grows is worse
    assert ablate.paired({0: 0.60, 1: 0.71, 2: 0.64}, base, "no_think/leak")["verdict"] == "worse"
    # the evaluation's own noise: the same one question of 300 lost at every seed (zero-width interval) is not a
    # finding; +10 points on 300 questions is (floor 1.96 x sqrt((0.65 x 0.35 + 0.55 x 0.45) / 300) = 7.7 points)
    lost_one = ablate.paired({0: 299 / 300, 1: 299 / 300, 2: 299 / 300}, {0: 1.0, 1: 1.0, 2: 1.0}, "think/adherence", 300)
    assert lost_one["ci"] == pytest.approx([-1 / 300, -1 / 300]) and lost_one["verdict"] == "within noise"
    assert ablate.paired({0: 0.60, 1: 0.71, 2: 0.64}, base, "think/accuracy", 300)["verdict"] == "better"
    assert ablate.paired({0: 0.60, 1: 0.71, 2: 0.64}, base, "think/accuracy", 50)["verdict"] == "within noise"
    # tokens: a change under 1% of the baseline's length is not one
    assert ablate.paired({0: 47.51, 1: 47.51, 2: 47.52}, {0: 47.5, 1: 47.5, 2: 47.5}, "think/tokens")["verdict"] == "within noise"
    one = ablate.paired({0: 0.9}, base, "think/accuracy")
    assert one["verdict"] == "one seed: no verdict" and one["ci"] is None
    assert ablate.paired({5: 0.9}, base, "think/accuracy")["verdict"] == "no shared seed"


def _run(metrics: dict) -> dict:
    return {"metrics": metrics, "train_wall_s": 10.0, "eval_wall_s": 1.0, "recipe": {}}


def test_summary_reports_spread_sampling_error_and_the_primary_verdict():
    runs = {
        "baseline": {0: _run({"think/accuracy": (0.5, 100), "think/tokens": (40.0, 100)}),
                     1: _run({"think/accuracy": (0.6, 100), "think/tokens": (42.0, 100)})},
        "arm": {0: _run({"think/accuracy": (0.7, 100), "think/tokens": (30.0, 100)}),
                1: _run({"think/accuracy": (0.8, 100), "think/tokens": (31.0, 100)})},
    }
    summary = ablate.summarize(runs, "think/accuracy")
    base = summary["baseline"]["metrics"]["think/accuracy"]
    assert base["mean"] == pytest.approx(0.55) and base["sd"] == pytest.approx(math.sqrt(0.005))
    assert base["eval_se"] == pytest.approx(math.sqrt(0.55 * 0.45 / 100))
    assert summary["baseline"]["metrics"]["think/tokens"]["eval_se"] is None
    assert summary["baseline"]["verdict"] == "baseline"
    # diffs 0.2, 0.2: no spread, so the interval is the point and the verdict is "better"
    assert summary["arm"]["verdict"] == "better"
    assert summary["arm"]["metrics"]["think/tokens"]["vs_baseline"]["verdict"] == "shorter"


def test_metrics_flatten_modes_levels_and_sources():
    mode = {"accuracy": 0.5, "mode_adherence": 1.0, "mean_tokens": 20.0, "n": 4,
            "by_level": {"1": {"accuracy": 0.75, "n": 4}, "2": {"accuracy": None, "n": 0}}}
    result = {"modes": {"think": mode}, "by_source": {"arithmetic": {"think": mode}}}
    found = flat_metrics(result)
    assert found == {"think/accuracy": (0.5, 4), "think/adherence": (1.0, 4), "think/tokens": (20.0, 4),
                     "think/L1/accuracy": (0.75, 4)}
    result["modes"]["auto_think"] = {**mode, "think_rate": 0.25, "by_level": {"1": {"accuracy": 1.0, "n": 4, "think_rate": 0.5}}}
    found = flat_metrics(result)
    assert found["auto_think/think_rate"] == (0.25, 4) and found["auto_think/L1/think_rate"] == (0.5, 4)
    assert "think/think_rate" not in found  # a manual mode has none
    result["by_source"]["gsm8k"] = {"think": {**mode, "accuracy": None}}
    found = flat_metrics(result)
    assert found["gsm8k/think/adherence"] == (1.0, 4) and "gsm8k/think/accuracy" not in found
    assert found["arithmetic/think/accuracy"] == (0.5, 4)


def _recipes(tmp_path: Path, model: Path, arms: dict, **keys) -> Path:
    base = tmp_path / "sft.yaml"
    base.write_text(yaml.safe_dump({
        "model_name_or_path": str(model), "output_dir": str(tmp_path / "unused"),
        "datasets": [{"name": "arithmetic", "split": "train", "rows": 16, "levels": [1]}],
        "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 256, "save_strategy": "no",
        "report_to": "none", "disable_tqdm": True, "learning_rate": 1e-3,
    }))
    config = tmp_path / "ablation.yaml"
    config.write_text(yaml.safe_dump({
        "name": "lr", "runs_dir": str(tmp_path / "ablations"), "stage": "sft", "base": str(base), "arms": arms,
        "seeds": [0, 1], "parallel": 2, "primary_metric": "no_think/adherence",
        "eval": {"datasets": [{"name": "arithmetic", "split": "test", "rows": 3, "levels": [1]}],
                 "max_new_tokens": 8, "batch_size": 8},
        **keys,
    }, sort_keys=False))
    return config


def _ablate(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posttrain", "ablate", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True)


def test_two_arms_two_seeds_end_to_end_then_resume(tmp_path, tiny_model_dir):
    config = _recipes(tmp_path, tiny_model_dir, {"baseline": {}, "lr_low": {"learning_rate": 1e-5}})
    done = _ablate(config)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run_dir = tmp_path / "ablations" / "lr"
    result = json.loads((run_dir / "ablation.json").read_text())
    assert set(result["runs"]) == {"baseline", "lr_low"} and result["failed"] == []
    for arm, lr in (("baseline", 1e-3), ("lr_low", 1e-5)):
        for seed in ("0", "1"):
            run = result["runs"][arm][seed]
            # the exact recipe each run trained with, as the stage recorded it
            assert run["recipe"]["SFTConfig"]["learning_rate"] == lr
            assert run["recipe"]["SFTConfig"]["seed"] == int(seed)
            assert run["metrics"]["think/adherence"][1] == 3 and run["train_wall_s"] > 0
            assert (run_dir / arm / f"seed{seed}" / "eval.json").is_file()
    lr_low = result["summary"]["lr_low"]
    assert lr_low["metrics"]["no_think/adherence"]["vs_baseline"]["seeds"] == 2
    assert lr_low["verdict"] in ("better", "worse", "within noise")
    markdown = (run_dir / "ablation.md").read_text()
    assert "| lr_low | learning_rate=1e-05 |" in markdown and "no_think/adherence" in markdown

    # a finished ablation re-runs nothing: no stage, no evaluation
    records = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/seed*/posttrain_run.json")}
    again = _ablate(config)
    assert again.returncode == 0 and "training" not in again.stdout and "evaluating" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/seed*/posttrain_run.json")} == records
    # a new arm runs alone, the others are reused; `untrained` scores the starting checkpoint without training
    config = _recipes(tmp_path, tiny_model_dir, {"baseline": {}, "lr_low": {"learning_rate": 1e-5},
                                                 "start": "untrained"}, seeds=[0], parallel=1)
    third = _ablate(config)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "training" not in third.stdout and third.stdout.count("evaluating") == 1
    assert "start seed 0: evaluating" in third.stdout
    result = json.loads((run_dir / "ablation.json").read_text())
    assert result["summary"]["start"]["verdict"] == "one seed: no verdict"
    assert result["runs"]["start"]["0"]["train_wall_s"] is None
    assert "| start | the starting checkpoint, not trained |" in (run_dir / "ablation.md").read_text()


def _refusal(tmp_path, model, arms, **keys) -> str:
    config = _recipes(tmp_path, model, arms, **keys)
    (args,) = parse_recipe([ablate.AblationArguments], ["--config", str(config)])
    with pytest.raises(UserError) as e:
        ablate.run(args, str(config))
    assert not (tmp_path / "ablations").exists()  # refused before anything ran
    return str(e.value)


def test_refusals_name_the_recipe_and_arm(tmp_path, tiny_model_dir):
    message = _refusal(tmp_path, tiny_model_dir, {"baseline": {}, "typo": {"learning_rat": 1e-4}})
    assert message.startswith(f"{tmp_path / 'ablation.yaml'}: arms.typo") and "learning_rat" in message
    assert "arms.x: 'seed'" in _refusal(tmp_path, tiny_model_dir, {"baseline": {}, "x": {"seed": 3}})
    assert "'stage'" in _refusal(tmp_path, tiny_model_dir, {"baseline": {}}, stage="pretrain")
    assert "'seeds'" in _refusal(tmp_path, tiny_model_dir, {"baseline": {}}, seeds=[1, 1])
    assert "'arms'" in _refusal(tmp_path, tiny_model_dir, {"baseline": {}, "x": "untrainde"})
    assert "'base'" in _refusal(tmp_path, tiny_model_dir, {"baseline": {}}, base=str(tmp_path / "missing.yaml"))
    assert "eval:" in _refusal(tmp_path, tiny_model_dir, {"baseline": {}}, eval={"max_new_token": 8})


@pytest.mark.parametrize("name", ["dpo", "rlvr", "rlvr_headroom", "sft_loss", "sft_fp32"])
def test_shipped_tiny_ablations_pass_every_check(name, tmp_path):
    config = f"recipes/tiny/ablations/{name}.yaml"
    (args,) = parse_recipe([ablate.AblationArguments], ["--config", str(ROOT / config)])
    assert len(args.seeds) >= 3 and args.arms[next(iter(args.arms))] in ("untrained", {})
    ablate.check(args, config, tmp_path / args.name)  # every arm's stage recipe and the evaluation parse
