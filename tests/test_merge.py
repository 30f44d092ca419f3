"""`posttrain merge`: the output is the weighted average tensor by tensor, loads with AutoModelForCausalLM,
handles tied embeddings and shards, and bad inputs fail naming the file and tensor before anything is written."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, SmolLM3ForCausalLM

from common.errors import UserError
from posttrain.merge import main, merge


@pytest.fixture(scope="module")
def second_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny checkpoint's architecture with other random weights (seed 1)."""
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny_model_b")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    SmolLM3ForCausalLM(model.config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _tensors(path):
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_merge_cli_is_the_weighted_average_and_loads(tiny_model_dir, second_model_dir, tmp_path):
    out = tmp_path / "merged"
    assert main(["--models", str(tiny_model_dir), str(second_model_dir), "--weights", "0.25", "0.75",
                 "--output_dir", str(out)]) == 0

    a, b, merged = _tensors(tiny_model_dir), _tensors(second_model_dir), _tensors(out)
    assert merged.keys() == a.keys()
    for key in a:
        assert not torch.equal(a[key], b[key]) or "norm" in key  # norms start at 1 in both
        torch.testing.assert_close(merged[key], 0.25 * a[key] + 0.75 * b[key], rtol=0, atol=1e-7)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # re-tied on load
    torch.testing.assert_close(model.model.embed_tokens.weight, merged["model.embed_tokens.weight"])
    assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    record = json.loads((out / "posttrain_run.json").read_text())
    assert record["weights"] == [0.25, 0.75] and record["tensors"] == len(a)
    assert not out.with_name("merged.partial").exists()


def test_merge_normalises_weights_drops_tied_copies_and_shards(tiny_model_dir, second_model_dir, tmp_path):
    # a checkpoint that also stores the tied LM head (as some non-transformers savers do)
    with_head = tmp_path / "with_head"
    shutil.copytree(tiny_model_dir, with_head)
    tensors = load_file(with_head / "model.safetensors")
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()},
              with_head / "model.safetensors", metadata={"format": "pt"})

    out = merge([with_head, second_model_dir], [3, 1], tmp_path / "merged", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and "lm_head.weight" not in index["weight_map"]
    a, b, merged = _tensors(tiny_model_dir), _tensors(second_model_dir), _tensors(out)
    for key in a:
        torch.testing.assert_close(merged[key], 0.75 * a[key] + 0.25 * b[key], rtol=0, atol=1e-7)
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model.lm_head.weight, merged["model.embed_tokens.weight"])
    assert json.loads((out / "posttrain_run.json").read_text())["tied_left_out"] == ["lm_head.weight"]


def _variant(src, dst, *, tensors=None, config=None):
    shutil.copytree(src, dst)
    if tensors is not None:
        save_file(tensors(load_file(dst / "model.safetensors")), dst / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config(json.loads((dst / "config.json").read_text()))))
    return dst


def test_mismatches_fail_naming_file_and_tensor_before_writing(tiny_model_dir, tmp_path):
    up = "model.layers.0.mlp.up_proj.weight"
    shape = _variant(tiny_model_dir, tmp_path / "shape", tensors=lambda t: {**t, up: t[up][:-1].clone()})
    missing = _variant(tiny_model_dir, tmp_path / "missing", tensors=lambda t: {k: v for k, v in t.items() if k != up})
    config = _variant(tiny_model_dir, tmp_path / "config", config=lambda c: {**c, "rms_norm_eps": 1e-5})
    out = tmp_path / "merged"
    cases = [
        ([tiny_model_dir, shape], None, rf"shape/model.safetensors: tensor '{up}' has shape \[511, 128\]"),
        ([tiny_model_dir, missing], None, rf"missing: no tensor '{up}'"),
        ([tiny_model_dir, config], None, r"config/config.json: 'rms_norm_eps' is 1e-05"),
        ([tiny_model_dir, tmp_path / "nowhere"], None, r"nowhere: not a checkpoint directory"),
        ([tiny_model_dir, shape], [1.0], r"'weights': 1 weights for 2 models"),
        ([tiny_model_dir, shape], [1.0, -0.5], r"'weights': must be >= 0"),
        ([tiny_model_dir], None, r"two or more checkpoints"),
    ]
    for models, weights, message in cases:
        with pytest.raises(UserError, match=message):
            merge(models, weights, out)
        assert not out.exists() and not out.with_name("merged.partial").exists()
    with safe_open(shape / "model.safetensors", "pt") as f:  # the inputs are untouched
        assert f.get_slice(up).get_shape() == [511, 128]
