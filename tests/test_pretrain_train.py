"""pretrain.train end to end on the tiny preset: checkpoint output, loss, curriculum, WSD decay restart, resume,
throughput, recipes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, SmolLM3ForCausalLM

import pretrain.train
from common.errors import UserError
from common.recipe import parse_recipe
from pretrain.cli import main
from pretrain.data import DataConfig
from pretrain.train import TrainConfig, build_model, make_plan, make_scheduler, param_groups, throughput

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain little from a second thread, and lose 3-5x when other processes share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_train(argv, capsys) -> str:
    """`pretrain train` that must stop with a one-line error (exit 2); returns the line."""
    capsys.readouterr()  # earlier runs' progress bars
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def tiny_recipe(tmp_path, tokenizer_dir, web_text, **overrides) -> str:
    """A recipe for a seconds-long run: two stages, the tiny preset, 64-token rows."""
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "tokenizer": str(tokenizer_dir),
        "sources": [
            {"name": "web", "type": "text", "path": str(web_text), "separator": "\n\n"},
            {"name": "sums", "type": "generator", "generator": "sums", "kwargs": {"n": 2000}},
        ],
        "stages": [
            {"name": "mostly_web", "tokens": 16 * 512, "weights": {"web": 0.9, "sums": 0.1}},
            {"name": "mostly_sums", "tokens": 14 * 512, "weights": {"web": 0.2, "sums": 0.8}},
        ],
        "seq_len": 64, "micro_batch_size": 4, "gradient_accumulation_steps": 2,
        "learning_rate": 1e-2, "warmup_steps": 3, "decay_fraction": 0.2,
        "save_steps": 5, "keep_last": 2, "logging_steps": 1, "seed": 0,
    }
    recipe.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


class Killed(Exception):
    """Stands in for a kill -9 in `interrupted_run`."""


def interrupted_run(recipe: str, step: int) -> None:
    """Run `recipe` until it dies while saving the checkpoint of `step`: after every rank's model, optimizer
    and RNG states are in tmp-step-N, before its trainer state is: what a kill -9 mid-save leaves."""
    write_json = pretrain.train.write_json

    def dying_write_json(path, obj):
        if path.parent.name == f"tmp-step-{step:08d}":
            raise Killed
        write_json(path, obj)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretrain.train, "write_json", dying_write_json)
        with pytest.raises(Killed):
            main(["train", "--config", recipe])


def file_stamps(root: Path) -> dict:
    return {str(f.relative_to(root)): (f.stat().st_size, f.stat().st_mtime_ns) for f in root.rglob("*") if f.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_tokenizer_dir, web_text):
    tmp = tmp_path_factory.mktemp("train")
    recipe = tiny_recipe(tmp, tiny_tokenizer_dir, web_text)
    assert main(["train", "--config", recipe]) == 0
    return tmp / "run", recipe


def test_run_saves_a_loadable_checkpoint_with_the_hybrid_template(finished_run):
    out, _ = finished_run
    assert not out.with_name("run.partial").exists()  # renamed into place when complete
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, SmolLM3ForCausalLM) and (out / "model.safetensors").is_file()
    assert model.config.vocab_size == len(tok) and model.config.bos_token_id == tok.bos_token_id
    assert "{% generation %}" in tok.chat_template and tok.eos_token == "<|im_end|>"
    ids = tok("To be or not", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_log_history_has_every_step_and_the_loss_falls(finished_run):
    out, _ = finished_run
    history = json.loads((out / "log_history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 31))  # (16 + 14) x 512 tokens / 512 per step
    assert all({"step", "loss", "lr", "tokens", "stage", "tokens_per_s"} <= set(h) for h in history)
    assert history[-1]["tokens"] == 30 * 4 * 2 * 64
    first, last = history[0]["loss"], sum(h["loss"] for h in history[-5:]) / 5
    assert first > math.log(512) - 0.5 and last < first - 1.5, (first, last)
    stages = [h["stage"] for h in history]
    assert stages[:16] == ["mostly_web"] * 16 and stages[16:] == ["mostly_sums"] * 14


def test_schedule_is_wsd_with_linear_warmup_and_decay(finished_run):
    out, _ = finished_run
    lrs = [h["lr"] for h in json.loads((out / "log_history.json").read_text())]
    assert lrs[:4] == pytest.approx([0, 1e-2 / 3, 2e-2 / 3, 1e-2])  # warmup 3 steps
    assert lrs[3:24] == pytest.approx([1e-2] * 21)  # stable until the last 20% (6 steps)
    assert lrs[24:] == pytest.approx([1e-2 * (1 - k / 6) for k in range(6)])


def test_state_counts_tokens_per_source_and_checkpoints_rotate(finished_run):
    out, _ = finished_run
    state = json.loads((out / "pretrain_state.json").read_text())
    assert state["step"] == 30 and sum(state["source_tokens"].values()) == state["tokens"] == 30 * 512
    assert state["source_tokens"]["web"] > state["source_tokens"]["sums"] > 0
    assert state["stage"] == "mostly_sums"
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step-00000025", "step-00000030"]  # keep_last: 2
    ckpt = json.loads((out / "checkpoints" / "step-00000025" / "trainer_state.json").read_text())
    assert ckpt["step"] == 25 and ckpt["stage"] == "mostly_sums" and sum(ckpt["source_tokens"].values()) == 25 * 512


def test_resume_replays_from_the_last_complete_checkpoint_and_cleans_a_half_written_one(
    finished_run, tmp_path, tiny_tokenizer_dir, web_text, capsys
):
    """Killed while saving step 15 (save_steps 5); resumed with save_steps 10, so nothing re-saves step 15:
    the resumed run skips and deletes tmp-step-15, starts at step 10, cuts the log back to it, and gives
    finished_run's loss curve. Checkpoints hold no log history (the log file is the record)."""
    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text)
    interrupted_run(recipe, step=15)
    partial = tmp_path / "run.partial"
    assert sorted(p.name for p in (partial / "checkpoints").iterdir()) == [
        "step-00000005", "step-00000010", "tmp-step-00000015"
    ]
    ckpt_state = json.loads((partial / "checkpoints" / "step-00000010" / "trainer_state.json").read_text())
    assert ckpt_state["step"] == 10 and "log_history" not in ckpt_state
    with open(partial / "log_history.jsonl", "a") as fh:
        fh.write('{"step": 16, "lo')  # a line a kill cut short
    capsys.readouterr()
    main(["train", "--config", recipe, "--save_steps", "10"])
    assert f"resuming from {partial / 'checkpoints' / 'step-00000010'} at step 10" in capsys.readouterr().out
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000020", "step-00000030"]
    history = json.loads((out / "log_history.json").read_text())
    expected = json.loads((finished_run[0] / "log_history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 31))
    for h, e in zip(history, expected):
        assert abs(h["loss"] - e["loss"]) <= 1e-5 and h["source_tokens"] == e["source_tokens"], (h, e)


def test_resume_with_a_changed_recipe_is_refused_before_anything_is_rewritten(
    tmp_path, tiny_tokenizer_dir, web_text, capsys
):
    """A run with a trained tokenizer and an editable source, killed while saving step 4; then a
    changed mixture, source, tokenizer spec or batch each stop with one line naming the key, and every file
    of the run (tokenizer, token files, checkpoints, the half-written save, the log) stays as it was."""
    web = tmp_path / "web.txt"
    web.write_text(web_text.read_text()[:200_000])
    base = {
        "tokenizer": {"files": [str(web)], "vocab_size": 400, "sources": ["sums"]},
        "sources": [
            {"name": "web", "type": "text", "path": str(web), "separator": "\n\n"},
            {"name": "sums", "type": "generator", "generator": "sums", "kwargs": {"n": 2000}},
        ],
        "save_steps": 2,
    }
    interrupted_run(tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text, **base), step=4)
    partial = tmp_path / "run.partial"
    assert (partial / "tokenizer").is_dir() and (partial / "checkpoints" / "step-00000002").is_dir()
    before = file_stamps(partial)
    stages = [{"name": "one", "tokens": 30 * 512, "weights": {"web": 0.5, "sums": 0.5}}]
    changes = [
        ("stages", dict(base, stages=stages)),
        ("tokenizer", dict(base, tokenizer=dict(base["tokenizer"], vocab_size=450))),
        ("micro_batch_size", dict(base, micro_batch_size=2)),
        ("tokens_per_step", dict(base, gradient_accumulation_steps=1)),
        ("sources", base),  # after the edit below
    ]
    for key, change in changes:
        if key == "sources":
            with open(web, "a") as fh:
                fh.write("\n\nA new paragraph.\n")
        err = run_train(["--config", tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text, **change)], capsys)
        assert f"step-00000002: this run's {key!r} differs from the checkpoint's" in err, err
        assert file_stamps(partial) == before, key
    # `pretrain tokenize` would rewrite the tokenizer and token files too: refused the same way
    with pytest.raises(SystemExit):
        main(["tokenize", "--config", tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text, **base)])
    assert "this run's 'sources' differs" in capsys.readouterr().err
    assert file_stamps(partial) == before


def test_throughput_mfu_is_against_every_process_peak():
    """tokens/s is the whole job's (every process's rows), so MFU divides by all devices' peak: twice the
    devices at twice the tokens/s is the same MFU."""
    one, two = throughput(100.0, 1e9, 1e12, num_processes=1), throughput(200.0, 1e9, 1e12, num_processes=2)
    assert one == {"tokens_per_s": 100.0, "tflops": 0.1, "mfu": 0.1}
    assert two == {"tokens_per_s": 200.0, "tflops": 0.2, "mfu": 0.1}
    assert "mfu" not in throughput(100.0, 1e9, None, num_processes=1)  # no known peak (CPU)


def test_save_steps_must_be_a_multiple_of_logging_steps():
    """A log line averages the steps since the last one: a checkpoint between log lines would lose them."""
    with pytest.raises(UserError, match=r"'save_steps' \(15\) must be a multiple of 'logging_steps' \(10\)"):
        TrainConfig(output_dir="x", save_steps=15, logging_steps=10)
    TrainConfig(output_dir="x", save_steps=0, logging_steps=10)  # never saves


def test_finished_output_dir_is_never_overwritten(finished_run, capsys):
    out, recipe = finished_run
    before = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(SystemExit):
        main(["train", "--config", recipe])
    assert "holds a finished run" in capsys.readouterr().err
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_decay_restarts_from_a_stable_checkpoint_without_retraining(tmp_path, tiny_tokenizer_dir, web_text, capsys):
    """Train 10 stable steps (no decay), then branch a decay off step 10 into a new run (with the same batch
    shape: other ones are refused)."""
    stable = tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text, max_steps=10, decay_fraction=0.0, save_steps=10)
    main(["train", "--config", stable])
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000010"
    stable_loss = json.loads((tmp_path / "run" / "log_history.json").read_text())[-1]["loss"]
    for change, key in ((dict(seq_len=32), "seq_len"), (dict(micro_batch_size=2), "micro_batch_size"),
                        (dict(gradient_accumulation_steps=1), "tokens_per_step")):
        other = tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text, output_dir=str(tmp_path / "other"),
                            decay_from=str(checkpoint), **change)
        err = run_train(["--config", other], capsys)
        assert f"'decay_from': this run's {key!r} differs from the checkpoint's" in err, err
    decay = tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text, output_dir=str(tmp_path / "decayed"),
                        decay_from=str(checkpoint), decay_fraction=0.25, save_steps=0)
    main(["train", "--config", decay])
    history = json.loads((tmp_path / "decayed" / "log_history.json").read_text())
    assert [h["step"] for h in history] == list(range(11, 14))  # 0.25 / 0.75 x 10 = 3.3 -> 3 decay steps
    assert [h["lr"] for h in history] == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])
    assert all(h["stage"] == "mostly_sums" for h in history)  # the decay trains on the last stage's mixture
    assert history[0]["loss"] < stable_loss + 1.0  # it continued the trained weights, not a fresh init (~6.2)
    assert history[0]["loss"] < math.log(512) - 1.0


def test_decay_from_a_checkpoint_past_the_stable_phase_is_refused(
    finished_run, tmp_path, tiny_tokenizer_dir, web_text, capsys
):
    out, _ = finished_run
    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text,
                         decay_from=str(out / "checkpoints" / "step-00000030"))
    with pytest.raises(SystemExit):
        main(["train", "--config", recipe])
    assert "step 30 is not in the stable phase" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_no_weight_decay_on_norms_biases_and_embeddings(tiny_tokenizer):
    cfg = TrainConfig(output_dir="x")
    model = build_model(cfg, tiny_tokenizer)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "model.embed_tokens.weight" in no_decay_names and "model.norm.weight" in no_decay_names
    assert all("norm" in n or "embed" in n for n in no_decay_names)
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"} <= decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.std(), torch.tensor(0.02), atol=2e-3, rtol=0)


def test_cosine_schedule_for_comparison():
    cfg = TrainConfig(output_dir="x", lr_scheduler="cosine", warmup_steps=2, learning_rate=1.0, min_lr_ratio=0.1)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, cfg, {"max_steps": 12, "decay_steps": 0, "decay_start": 12}, last_epoch=-1)
    lrs = []
    for _ in range(12):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0, 0.5, 1.0]) and lrs[-1] == pytest.approx(0.1, abs=0.03)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))


def test_tiny_recipe_parses_to_a_two_stage_mixture():
    data, cfg = parse_recipe([DataConfig, TrainConfig], ["--config", str(ROOT / "recipes/tiny/pretrain.yaml")])
    assert cfg.model == "tiny" and data.tokenizer["vocab_size"] == 1024
    assert [s.name for s in data.source_list] == ["web", "task"]
    assert data.source_list[1].generator == "arithmetic"
    assert data.stage_list[0].weights["web"] > data.stage_list[1].weights["web"]


def test_smollm3_recipe_builds_the_3b_model_on_the_meta_device(tmp_path):
    """The published SmolLM3-3B setup: built (not trained) with the Llama-3 tokenizer."""
    from pretrain.data import Curriculum, token_dtype
    from pretrain.tokenizer import build_llama3

    tokenizer = build_llama3(tmp_path / "llama3")
    argv = ["--config", str(ROOT / "recipes/smollm3/pretrain.yaml"), "--tokenizer", str(tmp_path / "llama3")]
    data, cfg = parse_recipe([DataConfig, TrainConfig], argv)
    adamw = (cfg.learning_rate, cfg.adam_beta1, cfg.adam_beta2, cfg.adam_epsilon, cfg.weight_decay)
    assert adamw == (2e-4, 0.9, 0.95, 1e-8, 0.1)
    assert (cfg.lr_scheduler, cfg.warmup_steps, cfg.decay_fraction, data.seq_len) == ("wsd", 2000, 0.1, 4096)
    assert [s.weights for s in data.stage_list][0] == {"web": 0.85, "code": 0.12, "math": 0.03}
    assert sum(s.tokens for s in data.stage_list) == 11_100_000_000_000
    with pytest.raises(UserError, match="uint16 cannot hold"):
        token_dtype(len(tokenizer), "uint16")
    with torch.device("meta"):
        model = build_model(cfg, tokenizer)
    assert sum(p.numel() for p in model.parameters()) == 3_075_098_624
    from pretrain.train import batch_shape

    accum, tokens_per_step = batch_shape(cfg, data.seq_len, world=8)
    assert tokens_per_step == 2_359_296 and accum == 24  # 2.36M-token global batch on one 8-GPU node
    plan = make_plan(cfg, Curriculum(data.stage_list, ["web", "code", "math"], tokens_per_step), None)
    assert plan["max_steps"] == math.ceil(11.1e12 / 2_359_296) and plan["decay_steps"] == round(0.1 * plan["max_steps"])


@pytest.mark.slow
def test_tiny_recipe_pretrains_with_one_command(tmp_path):
    """The shipped recipe cut to its first 120 of 928 steps (~50 s; the full run is the main job's first stage):
    one command, both curriculum stages, the loss falls clearly, the checkpoint loads, and the rendered system
    block is short with the recipe's tokenizer."""
    out = tmp_path / "pretrain"
    cmd = [sys.executable, "-m", "pretrain.cli", "train", "--config", "recipes/tiny/pretrain.yaml"]
    subprocess.run([*cmd, "--output_dir", str(out), "--max_steps", "120"], cwd=ROOT, check=True, capture_output=True)
    history = json.loads((out / "log_history.json").read_text())
    assert history[-1]["step"] == 120 and {h["stage"] for h in history} == {"web", "task"}
    assert history[0]["loss"] > 6.0 and history[-1]["loss"] < 2.0  # measured: 6.81 -> 1.28
    tok = AutoTokenizer.from_pretrained(out)
    AutoModelForCausalLM.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12+30?"}], tokenize=False,
                                     add_generation_prompt=True, enable_thinking=True)
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) < 90


def test_pretraining_reports_to_trackio(tmp_path, tiny_tokenizer_dir, web_text):
    """`report_to: trackio` goes through accelerate's tracker: the run's losses land in trackio's local store, in
    the project and under the run name the recipe gives (what `posttrain pipeline --report_to trackio` passes)."""
    import os
    import sqlite3

    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text, report_to="trackio", project="exp",
                         run_name="pretrain",
                         stages=[{"name": "all", "tokens": 4 * 512, "weights": {"web": 1.0}}])
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": str(ROOT / "tests")}
    subprocess.run([sys.executable, "-m", "pretrain.cli", "train", "--config", recipe], cwd=ROOT, check=True, env=env)
    rows = sqlite3.connect(tmp_path / "trackio" / "exp.db").execute("select run_name, metrics from metrics").fetchall()
    assert rows and all(run == "pretrain" and "loss" in json.loads(metrics) for run, metrics in rows)
