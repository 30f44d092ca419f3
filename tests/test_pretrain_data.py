"""pretrain.data: token files, O(1) packed windows, intra-document masking, the mixture curriculum, bad input."""

import json
import os
import re

import numpy as np
import pytest
import torch
from transformers import SmolLM3ForCausalLM

from common.errors import UserError
from pretrain.data import Curriculum, DataConfig, PackedLoader, open_sources, parse_count, prepare
from pretrain.presets import model_config
from test_pretrain_train import one_thread, run_train  # noqa: F401  (one_thread: autouse, one torch thread)


def sums(n: int, seed: int = 0) -> list[str]:
    """A generator source for the tests: short arithmetic documents."""
    rng = np.random.default_rng(seed)
    return [f"{a}+{b}={a + b}" for a, b in rng.integers(0, 500, size=(n, 2))]


def data_config(tmp_path, tokenizer_dir, web_text, **overrides) -> DataConfig:
    rows = tmp_path / "rows.jsonl"
    if not rows.exists():
        rows.write_text("".join(json.dumps({"body": f"Row {i} says hello."}) + "\n" for i in range(50)))
    spec = dict(
        tokenizer=str(tokenizer_dir),
        sources=[
            {"name": "web", "type": "text", "path": str(web_text), "separator": "\n\n"},
            {"name": "rows", "type": "jsonl", "path": str(rows), "field": "body"},
            {"name": "sums", "type": "generator", "generator": "sums", "kwargs": {"n": 300}},
        ],
        stages=[
            {"name": "one", "tokens": 4096, "weights": {"web": 0.5, "rows": 0.25, "sums": 0.25}},
            {"name": "two", "tokens": "8K", "weights": {"web": 0.0, "rows": 0.0, "sums": 1.0}},
        ],
        seq_len=64,
    )
    return DataConfig(**{**spec, **overrides})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_tokenizer_dir, web_text):
    tmp = tmp_path_factory.mktemp("data")
    data = data_config(tmp, tiny_tokenizer_dir, web_text)
    tokenizer = prepare(data, tmp / "work", log=lambda *_: None)
    return data, tokenizer, tmp / "work" / "tokens"


def test_tokenize_writes_flat_token_files_with_document_index(prepared, web_text):
    data, tok, tokens = prepared
    for name in ("web", "rows", "sums"):
        meta = json.loads((tokens / f"{name}.json").read_text())
        ids = np.memmap(tokens / f"{name}.bin", dtype=meta["dtype"], mode="r")
        starts = np.load(tokens / f"{name}.idx.npy")
        assert meta["dtype"] == "uint16" and len(ids) == starts[-1] == meta["tokens"]
        assert len(starts) == meta["documents"] + 1
        assert (ids[starts[:-1]] == tok.bos_token_id).all()  # every document opens with the bos token
    paragraphs = [p for p in web_text.read_text().split("\n\n") if p.strip()]
    web_starts = np.load(tokens / "web.idx.npy")
    web = np.memmap(tokens / "web.bin", dtype=np.uint16, mode="r")
    assert len(web_starts) - 1 == len(paragraphs)
    assert tok.decode(web[web_starts[1] + 1 : web_starts[2]]) == paragraphs[1]
    sums_ids = np.memmap(tokens / "sums.bin", dtype=np.uint16, mode="r")
    sums_starts = np.load(tokens / "sums.idx.npy")
    assert tok.decode(sums_ids[sums_starts[0] + 1 : sums_starts[1]]) == sums(1)[0]


def test_tokenize_skips_fresh_files_and_redoes_stale_ones(prepared, tmp_path):
    data, tok, tokens = prepared
    before = {f.name: f.stat().st_mtime_ns for f in tokens.iterdir()}
    prepare(data, tokens.parent, log=lambda *_: None)
    assert {f.name: f.stat().st_mtime_ns for f in tokens.iterdir()} == before
    rows = data.source_list[1].path
    with open(rows, "a") as fh:
        fh.write(json.dumps({"body": "One more row."}) + "\n")
    prepare(data, tokens.parent, log=lambda *_: None)
    assert json.loads((tokens / "rows.json").read_text())["documents"] == 51
    assert (tokens / "web.bin").stat().st_mtime_ns == before["web.bin"]


def test_packed_rows_restart_positions_and_ignore_each_documents_first_label(prepared):
    data, tok, tokens = prepared
    files = open_sources(tokens, data.source_list, data.seq_len)
    curriculum = Curriculum(data.stage_list, ["web", "rows", "sums"], tokens_per_step=8 * 64)
    batch, counts = PackedLoader(files, curriculum, 64, 8, seed=0).batch(step=0)
    ids, pos, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    assert ids.shape == pos.shape == labels.shape == (8, 64) and ids.dtype == torch.long
    assert counts.sum() == 8 * 64
    starts = ids == tok.bos_token_id
    assert ((pos == 0) == (starts | (torch.arange(64) == 0))).all()  # restarts exactly at documents and row start
    assert (pos[:, 1:] - pos[:, :-1])[~starts[:, 1:]].eq(1).all()  # and count up inside a document
    assert (labels[starts] == -100).all() and (labels[~starts & (pos > 0)] == ids[~starts & (pos > 0)]).all()
    assert starts[:, 1:].sum() > 0  # rows really pack several documents


def test_batches_are_a_pure_function_of_seed_rank_and_step(prepared):
    data, tok, tokens = prepared
    files = open_sources(tokens, data.source_list, data.seq_len)
    curriculum = Curriculum(data.stage_list, ["web", "rows", "sums"], tokens_per_step=8 * 64)
    rank0, rank1 = (PackedLoader(files, curriculum, 64, 8, seed=0, rank=r) for r in (0, 1))
    deep = 10**9  # far past any epoch: same cost, no state to replay
    assert torch.equal(rank0.batch(5)[0]["input_ids"], rank0.batch(5)[0]["input_ids"])
    fresh = PackedLoader(files, curriculum, 64, 8, seed=0)
    assert torch.equal(rank0.batch(deep)[0]["input_ids"], fresh.batch(deep)[0]["input_ids"])
    assert not torch.equal(rank0.batch(5)[0]["input_ids"], rank1.batch(5)[0]["input_ids"])
    assert not torch.equal(rank0.batch(5)[0]["input_ids"], rank0.batch(6)[0]["input_ids"])


def test_mixture_follows_stage_weights_and_switches_at_the_budget(prepared):
    data, tok, tokens = prepared
    files = open_sources(tokens, data.source_list, data.seq_len)
    curriculum = Curriculum(data.stage_list, ["web", "rows", "sums"], tokens_per_step=1024)
    assert [curriculum.stage_at(s) for s in (0, 3, 4, 11, 12, 99)] == [0, 0, 1, 1, 1, 1]  # 4096 then 8000 tokens
    assert curriculum.total_steps == 12
    loader = PackedLoader(files, curriculum, 64, 16, seed=0)
    shares = np.sum([loader.batch(step, micro)[1] for step in range(4) for micro in range(50)], axis=0)
    assert np.allclose(shares / shares.sum(), [0.5, 0.25, 0.25], atol=0.03)  # stage one's weights
    assert (loader.batch(4)[1] == [0, 0, 16 * 64]).all()  # stage two: only sums
    decay = Curriculum(data.stage_list, ["web", "rows", "sums"], tokens_per_step=1024, decay_start=2)
    assert [decay.stage_at(s) for s in (0, 1, 2, 3)] == [0, 0, 1, 1]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_separate_documents(prepared, attn):
    """No attention_mask + restarting position_ids (and use_cache=False) = block-diagonal attention. Every
    document of the batch scored alone gives its packed logits; without the restarts the logits differ."""
    data, tok, tokens = prepared
    files = open_sources(tokens, data.source_list, data.seq_len)
    batch, _ = PackedLoader(files, Curriculum(data.stage_list, ["web", "rows", "sums"], 512), 64, 8, 0).batch(1)
    ids, pos = batch["input_ids"], batch["position_ids"]
    later_docs = (pos == 0).cumsum(1) > 1  # tokens after the first document of their row
    assert later_docs.any(1).sum() >= 4  # most rows pack several documents
    torch.manual_seed(0)
    model = SmolLM3ForCausalLM(model_config("tiny", tokenizer=tok, attn_implementation=attn)).eval()
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        separate = []
        for row, row_pos in zip(ids, pos):
            bounds = torch.nonzero(row_pos == 0).flatten().tolist() + [64]
            docs = [model(input_ids=row[None, a:b], use_cache=False).logits[0] for a, b in zip(bounds, bounds[1:])]
            separate.append(torch.cat(docs))
        separate = torch.stack(separate)
        leaky = model(input_ids=ids, position_ids=torch.arange(64).expand_as(ids), use_cache=False).logits
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)
    assert (leaky - separate)[later_docs].abs().amax(-1).min() > 1e-3  # every token after a boundary leaks


def test_parse_count_reads_suffixes():
    assert parse_count("8T", "x") == 8 * 10**12 and parse_count("1.1T", "x") == 1_100_000_000_000
    assert parse_count(2e6, "x") == 2_000_000 and parse_count("500K", "x") == 500_000
    with pytest.raises(UserError, match="x"):
        parse_count("lots", "x")


# ---------------------------------------------------------------- bad input: one line, nothing written


def write_recipe(path, data: dict, output_dir) -> str:
    import yaml

    path.write_text(yaml.safe_dump({**data, "output_dir": str(output_dir), "max_steps": 2, "warmup_steps": 0}))
    return str(path)


@pytest.fixture
def good_recipe(tmp_path, tiny_tokenizer_dir, web_text):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "hello there"}) + "\n")
    return {
        "tokenizer": str(tiny_tokenizer_dir),
        "sources": [
            {"name": "web", "type": "text", "path": str(web_text)},
            {"name": "rows", "type": "jsonl", "path": str(rows)},
        ],
        "stages": [{"name": "s", "tokens": 1000, "weights": {"web": 0.5, "rows": 0.5}}],
        "seq_len": 8,
    }


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty_file", r"empty\.txt: source 'web' field 'path': file is empty"),
        ("missing_file", r"missing\.txt: source 'web' field 'path': file not found"),
        ("weights_sum", r"stages\[0\]' \(s\): weights sum to 0\.9, not 1"),
        ("unknown_source", r"stages\[0\]' \(s\): weights name unknown source 'code'"),
        # 65,535 + the 2 think tags train_bpe adds: caught before the tokenizer is trained
        ("uint16_vocab", r"'token_dtype': uint16 cannot hold the ids of a 65,537-token vocabulary"),
        ("no_vocab_size", r"recipe key 'tokenizer': field 'vocab_size' is required"),
        ("bad_row", r"rows\.jsonl: row 2: field 'text' is missing"),
        ("no_stages", r"recipe key 'stages': give at least one"),
    ],
)
def test_bad_input_stops_before_training_with_one_line(case, expected, good_recipe, tmp_path, capsys, web_text):
    recipe = good_recipe
    if case == "empty_file":
        (tmp_path / "empty.txt").write_text("")
        recipe["sources"][0]["path"] = str(tmp_path / "empty.txt")
    elif case == "missing_file":
        recipe["sources"][0]["path"] = str(tmp_path / "missing.txt")
    elif case == "weights_sum":
        recipe["stages"][0]["weights"] = {"web": 0.5, "rows": 0.4}
    elif case == "unknown_source":
        recipe["stages"][0]["weights"] = {"web": 0.5, "code": 0.5}
    elif case == "uint16_vocab":
        spec = {"files": [str(web_text)], "vocab_size": 65535}
        recipe.update(tokenizer=spec, token_dtype="uint16")
    elif case == "no_vocab_size":
        recipe["tokenizer"] = {"files": [str(web_text)]}
    elif case == "no_stages":
        recipe["stages"] = []
    elif case == "bad_row":
        with open(recipe["sources"][1]["path"], "a") as fh:
            fh.write(json.dumps({"body": "no text field"}) + "\n")
    out = tmp_path / "run"
    err = run_train(["--config", write_recipe(tmp_path / "r.yaml", recipe, out)], capsys)
    assert re.search(expected, err), err
    assert not out.exists()
    assert not (tmp_path / "run.partial" / "checkpoints").exists()  # no training happened


@pytest.mark.parametrize(
    "second_source, expected",
    [
        ({"type": "text", "path": "blank.txt"}, r"source 'blank' \(.*blank\.txt\): no non-blank documents"),
        ({"type": "jsonl", "path": "blank.jsonl"}, r"source 'blank' \(.*blank\.jsonl\): no non-blank documents"),
        ({"type": "generator", "generator": "sums", "kwargs": {"n": 0}},
         r"source 'blank' \(sums\): no non-blank documents"),
    ],
)
def test_source_without_documents_stops_before_anything_is_written(
    second_source, expected, good_recipe, tmp_path, capsys
):
    """Caught up front, not when its turn to be tokenized comes after the first source's files."""
    (tmp_path / "blank.txt").write_text("\n\n  \n\n")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": " \n"}) + "\n")
    if "path" in second_source:
        second_source = dict(second_source, path=str(tmp_path / second_source["path"]))
    good_recipe["sources"][1] = {"name": "blank", **second_source}
    good_recipe["stages"][0]["weights"] = {"web": 0.5, "blank": 0.5}
    err = run_train(["--config", write_recipe(tmp_path / "r.yaml", good_recipe, tmp_path / "run")], capsys)
    assert re.search(expected, err), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_token_file_that_does_not_match_its_index_stops_the_run(good_recipe, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", good_recipe, out)
    from pretrain.cli import main

    main(["tokenize", "--config", recipe])
    tokens = tmp_path / "run.partial" / "tokens"
    with open(tokens / "web.bin", "r+b") as fh:  # lose the last token, as a truncated copy would
        fh.truncate(os.path.getsize(tokens / "web.bin") - 2)
    before = {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in tokens.iterdir()}
    err = run_train(["--config", recipe], capsys)
    assert "web.bin: holds" in err and "its index web.idx.npy says" in err
    assert {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in tokens.iterdir()} == before  # nothing overwritten
    assert not out.exists() and not (tmp_path / "run.partial" / "checkpoints").exists()
