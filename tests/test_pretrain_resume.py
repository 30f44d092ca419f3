"""`pretrain train` resumes only the run its recipe describes: a changed key is named (old -> new) and refused
before anything is written, unless it is one a resumed run may change, or `--start_over` is given."""

import json

from pretrain.cli import main
from test_pretrain_train import file_stamps, interrupted_run, one_thread, run_train, tiny_recipe  # noqa: F401


def test_changed_recipe_is_refused_naming_each_key_until_start_over(tmp_path, tiny_tokenizer_dir, web_text, capsys):
    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text, save_steps=2, max_steps=8)
    interrupted_run(recipe, step=4)
    partial = tmp_path / "run.partial"
    before = file_stamps(partial)

    # a new learning rate used to be ignored (the checkpoint's schedule went on) while the run recorded it
    err = run_train(["--config", recipe, "--learning_rate", "5e-3", "--max_steps", "10"], capsys)
    assert err == (
        f"error: {partial / 'checkpoints' / 'step-00000002'}: the recipe differs from the run it resumes "
        "(max_steps 8 -> 10; learning_rate 0.01 -> 0.005); restore those values, or pass --start_over to train "
        "from step 0 (its checkpoints are deleted)"
    )
    assert file_stamps(partial) == before

    # keys that change no step's result may change: it resumes (and dies again saving step 6)
    capsys.readouterr()
    interrupted_run(tiny_recipe(tmp_path, tiny_tokenizer_dir, web_text, save_steps=2, max_steps=8, keep_last=3,
                                torch_threads=1, run_name="again"), step=6)
    assert "step-00000002 at step 2" in capsys.readouterr().out

    capsys.readouterr()
    assert main(["train", "--config", recipe, "--learning_rate", "5e-3", "--keep_last", "3", "--start_over"]) == 0
    assert "resuming" not in capsys.readouterr().out
    state = json.loads((tmp_path / "run" / "pretrain_state.json").read_text())
    assert state["config"]["learning_rate"] == 5e-3 and state["step"] == 8
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 9))
    assert max(h["lr"] for h in history) == 5e-3  # the new peak rate, trained with from step 0
