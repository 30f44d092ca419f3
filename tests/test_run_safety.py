"""Runs that must not lose or clobber work: resuming an interrupted stage from `<output_dir>.partial/`, one
writer per output directory (`<output_dir>.lock`), and overwrite only ever replacing a directory posttrain
wrote. Real `posttrain sft` / `merge` runs on the tiny model."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from common import outputs
from common.errors import UserError
from posttrain import merge, sft, stage

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, model: Path, **keys) -> list[str]:
    recipe = {
        "output_dir": str(tmp_path / "out"), "model_name_or_path": str(model),
        "datasets": [{"name": "arithmetic", "split": "train", "rows": 16, "levels": [1]}],
        "max_steps": 3, "per_device_train_batch_size": 4, "max_length": 512, "learning_rate": 2e-3,
        "save_strategy": "steps", "save_steps": 1, "report_to": "none", "seed": 0, "disable_tqdm": True, **keys,
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return ["--config", str(path)]


class InterruptAfterSave(TrainerCallback):
    """Ctrl-C right after checkpoint-`step` is saved."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _interrupted(argv, step=2) -> None:
    from trl import ModelConfig, SFTConfig

    args = stage.parse_args((sft.SFTScriptArguments, SFTConfig, ModelConfig), argv, "test", sft.SFT_DEFAULTS)
    run = sft.build("sft", *args)
    run.trainer.add_callback(InterruptAfterSave(step))
    with pytest.raises(KeyboardInterrupt):
        run.run()


def _record(out: Path) -> dict:
    return json.loads((out / outputs.RUN_RECORD).read_text())


def test_rerun_resumes_from_the_last_complete_checkpoint_and_a_changed_recipe_is_refused(
        tmp_path, tiny_model_dir, caplog):
    argv = _recipe(tmp_path, tiny_model_dir)
    _interrupted(argv)
    partial, out = tmp_path / "out.partial", tmp_path / "out"
    assert {p.name for p in partial.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    assert not (tmp_path / "out.lock").exists()  # released on the way out
    (partial / "checkpoint-3").mkdir()  # what a kill during the next save leaves: no trainer_state.json

    with pytest.raises(UserError) as error:  # changed recipe: refused, naming the key, nothing touched
        sft.main(argv + ["--learning_rate", "0.1", "--max_steps", "4"])
    assert str(error.value) == (
        f"{partial}: the recipe changed since the interrupted run (learning_rate: 0.002 -> 0.1; max_steps: 3 -> 4); "
        "re-run it unchanged to resume, or set resume_from_checkpoint: false to start over")
    assert (partial / "checkpoint-2" / "trainer_state.json").is_file()

    with caplog.at_level(logging.INFO, logger="posttrain"):
        sft.main(argv)
    assert f"sft: resuming from {partial / 'checkpoint-2'} (resume_from_checkpoint: false starts over)" in caplog.text
    record = _record(out)
    assert record["resumed_from"] == str(partial / "checkpoint-2") and record["global_step"] == 3
    assert not partial.exists() and not list(out.glob("checkpoint-*"))


def test_resume_from_checkpoint_takes_true_false_or_a_path(tmp_path, tiny_model_dir, caplog):
    argv = _recipe(tmp_path, tiny_model_dir)
    with pytest.raises(UserError, match=r"resume_from_checkpoint': true, but .*out.partial holds no complete"):
        sft.main(argv + ["--resume_from_checkpoint", "true"])
    assert not (tmp_path / "out.partial").exists()
    _interrupted(argv)
    partial = tmp_path / "out.partial"
    # false: start over with a changed recipe, discarding the checkpoints, said in the log
    with caplog.at_level(logging.INFO, logger="posttrain"):
        sft.main(argv + ["--resume_from_checkpoint", "false", "--learning_rate", "0.1"])
    assert f"{tmp_path / 'out'}: starting over, discarding {partial}" in caplog.text
    record = _record(tmp_path / "out")
    assert record["resumed_from"] is None and record["learning_rate"] == 0.1

    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match="holds no complete checkpoint"):  # YAML's true too
        sft.main(_recipe(tmp_path / "b", tiny_model_dir, resume_from_checkpoint=True))
    with pytest.raises(UserError, match="is not a complete Trainer checkpoint"):
        sft.main(_recipe(tmp_path / "b", tiny_model_dir) + ["--resume_from_checkpoint", str(tmp_path / "nowhere")])


def test_one_writer_per_output_dir_and_a_dead_owners_lock_is_taken_over(tmp_path, tiny_model_dir, caplog):
    argv = _recipe(tmp_path, tiny_model_dir, max_steps=1, save_strategy="no")
    lock = tmp_path / "out.lock"
    with outputs.StageOutput(str(tmp_path / "out")).lock():  # another run holds it
        owner = json.loads(lock.read_text())
        assert owner == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(UserError) as error:
            sft.main(argv)
        assert str(error.value).startswith(f"output_dir {tmp_path / 'out'} is being written by another run "
                                           f"({lock}: {owner})")
        assert not (tmp_path / "out").exists()
    assert not lock.exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))  # what kill -9 leaves
    with caplog.at_level(logging.INFO, logger="posttrain"):
        sft.main(argv)
    assert f"{lock}: taking over the lock of pid {dead.pid} (no longer running)" in caplog.text
    assert (tmp_path / "out" / outputs.RUN_RECORD).is_file() and not lock.exists()

    lock.write_text(json.dumps({"pid": dead.pid, "host": "another-host"}))  # its pid cannot be checked from here
    with pytest.raises(UserError, match="is being written by another run"):
        sft.main(argv + ["--overwrite_output_dir", "true"])


@pytest.mark.parametrize("case", ["file", "foreign dir", "parent is a file"])
@pytest.mark.parametrize("command", ["sft", "merge"])
def test_overwrite_only_replaces_what_posttrain_wrote(tmp_path, tiny_model_dir, case, command):
    target = tmp_path / "afile"
    if case == "file":
        target.write_text("my notes")
        message = f"output_dir {target}: {target} is a file, not a directory; choose another output_dir"
    elif case == "foreign dir":
        target.mkdir()
        (target / "notes.txt").write_text("my notes")
        message = f"output_dir {target} is a non-empty directory that posttrain did not write"
    else:
        (tmp_path / "parent").write_text("my notes")
        target = tmp_path / "parent" / "out"
        message = f"output_dir {target}: {tmp_path / 'parent'} is a file, not a directory"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as error:
        if command == "sft":
            sft.main(_recipe(tmp_path, tiny_model_dir, output_dir=str(target), overwrite_output_dir=True))
        else:
            merge.merge([tiny_model_dir, tiny_model_dir], None, target, overwrite=True)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"} == {
        p: b for p, b in before.items()}
    assert not [p for pattern in ("*.partial", "*.lock", "*.old") for p in tmp_path.glob(pattern)]


def test_merge_takes_the_lock_and_replaces_its_own_output_only_with_overwrite(tmp_path, tiny_model_dir):
    out = tmp_path / "merged"
    with outputs.StageOutput(str(out)).lock():
        with pytest.raises(UserError, match=f"output_dir {out} is being written by another run"):
            merge.merge([tiny_model_dir, tiny_model_dir], None, out)
    assert not out.exists() and not (tmp_path / "merged.partial").exists()
    merge.merge([tiny_model_dir, tiny_model_dir], None, out)
    with pytest.raises(UserError, match="already holds a complete output; set overwrite_output_dir: true"):
        merge.merge([tiny_model_dir, tiny_model_dir], None, out)
    merge.merge([tiny_model_dir, tiny_model_dir], [2, 1], out, overwrite=True)
    assert _record(out)["weights"] == [2 / 3, 1 / 3] and not (tmp_path / "merged.lock").exists()


@pytest.mark.slow
def test_sft_killed_with_sigkill_resumes_on_a_plain_rerun(tmp_path, tiny_model_dir):
    """kill -9 mid-training: the same command again takes over the dead run's lock and resumes from its last
    complete checkpoint."""
    argv = _recipe(tmp_path, tiny_model_dir, max_steps=60, save_steps=10, save_total_limit=2)
    cmd = [sys.executable, "-m", "posttrain", "sft", *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "out.partial"
    deadline = time.time() + 300
    while outputs.last_complete_checkpoint(partial) is None:
        assert proc.poll() is None and time.time() < deadline, "the run ended before a checkpoint was saved"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = outputs.last_complete_checkpoint(partial)
    assert (tmp_path / "out.lock").exists() and not (tmp_path / "out").exists()
    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"taking over the lock of pid {proc.pid}" in resumed.stderr
    assert f"sft: resuming from {killed_at}" in resumed.stderr
    record = _record(tmp_path / "out")
    assert record["resumed_from"] == str(killed_at) and record["global_step"] == 60


def test_pipeline_rerun_keeps_a_stage_that_finished_before_it_was_recorded(tmp_path, tiny_model_dir, capsys):
    """The pipeline stopped after a stage had renamed its output into place but before pipeline_state.json said
    so (e.g. during its evaluation): a re-run keeps that output instead of training the stage again."""
    import shutil

    from common.recipe import parse_recipe
    from posttrain import pipeline

    sft_out = tmp_path / "p" / "sft"
    shutil.copytree(tiny_model_dir, sft_out)
    (sft_out / outputs.RUN_RECORD).write_text(json.dumps({"stage": "sft", "wall_s": 12.5}))
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"name": "p", "runs_dir": str(tmp_path),
                                      "stages": {"sft": "recipes/tiny/sft.yaml"}}))
    (args,) = parse_recipe([pipeline.PipelineArguments], ["--config", str(config)])
    summary = pipeline.run(args)
    assert f"[pipeline] sft: trained in an earlier run, not retrained ({sft_out})" in capsys.readouterr().out
    assert summary["stages"]["sft"]["wall_s"] == 12.5
    assert json.loads((tmp_path / "p" / "pipeline_state.json").read_text()) == {"sft": {"wall_s": 12.5}}
