"""Data files the loaders once mishandled (empty, BOM, bad bytes) and the mode of a row: decided by
`data.row_mode` from every field the template reads, and exactly the mode the template renders."""

import json
import re

import pytest

from posttrain import data
from posttrain.data import DataError


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _chat(reply, reasoning=None, system=None, **extra):
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": reply, "reasoning_content": reasoning}]
    return {"messages": messages, **extra}


@pytest.mark.parametrize("loader, name", [(data.load_conversations, "messages"),
                                          (data.load_preferences, "preferences")])
@pytest.mark.parametrize("text", ["", "\n  \n\t\n"])
def test_an_empty_or_blank_data_file_is_one_line_naming_it(tmp_path, loader, name, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: no rows \(the file is empty or holds only blank"):
        loader([{"name": name, "path": str(path)}], no_think_fraction=0.5, seed=0)


def test_a_utf8_bom_is_accepted_and_bad_bytes_are_reported_on_their_own_row(tmp_path):
    rows = [_chat("4", mode="no_think")] * 3
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    assert len(data.load_conversations([{"name": "messages", "path": str(path)}], no_think_fraction=1, seed=0)) == 3
    bad = tmp_path / "bad.jsonl"
    good = (json.dumps(rows[0]) + "\n").encode()
    bad.write_bytes(good * 400 + b'{"messages": "\xff"}\n' + good)  # past the text reader's first decoded block
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: row 401: not UTF-8 text"):
        data.load_conversations([{"name": "messages", "path": str(bad)}], no_think_fraction=1, seed=0)


def _rendered_mode(tokenizer, row) -> str:
    text = tokenizer.apply_chat_template(row["messages"], tokenize=False, **row["chat_template_kwargs"])
    return re.search(r"Reasoning Mode: /(no_think|think)", text).group(1)


def test_the_counted_mode_is_the_rendered_mode_whatever_field_sets_it(tmp_path, tiny_tokenizer):
    """A system flag, `enable_thinking` or `mode` each fix the row's mode, which no_think_fraction (here: all
    /no_think) cannot change; the template renders that mode, and a /think row keeps its reasoning."""
    rows = [
        _chat("4", system="Be brief. /no_think"),
        _chat("4", "2+2=4", system="Careful now /think"),
        _chat("4", chat_template_kwargs={"enable_thinking": False}),
        _chat("4", "2+2=4", chat_template_kwargs={"enable_thinking": True}),
        _chat("4", "2+2=4", mode="think", system="/think"),
    ]
    ds = data.load_conversations([{"name": "messages", "path": _write(tmp_path / "m.jsonl", rows)}],
                                 no_think_fraction=1.0, seed=0)
    assert ds["mode"] == ["no_think", "think", "no_think", "think", "think"]
    for row in ds:
        assert _rendered_mode(tiny_tokenizer, row) == row["mode"]
        text = tiny_tokenizer.apply_chat_template(row["messages"], tokenize=False, **row["chat_template_kwargs"])
        assert ("<think>\n2+2=4\n</think>" in text) == (row["mode"] == "think")


@pytest.mark.parametrize("row, message", [
    (_chat("4", "2+2=4", mode="think", system="/no_think"),
     "field 'messages[0].content': says /no_think, but field 'mode' says /think"),
    (_chat("4", mode="no_think", system="Answer. /think"),
     "field 'messages[0].content': says /think, but field 'mode' says /no_think"),
    (_chat("4", "x", chat_template_kwargs={"enable_thinking": False}, mode="think"),
     "field 'chat_template_kwargs.enable_thinking': says /no_think, but field 'mode' says /think"),
    (_chat("4", "2+2=4", system="/no_think"), "field 'messages[2].content': a <think> block in a /no_think answer"),
])
def test_contradicting_mode_fields_are_one_line_naming_file_row_and_field(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [_chat("4", mode="no_think"), row])
    with pytest.raises(DataError) as error:
        data.load_conversations([{"name": "messages", "path": path}], no_think_fraction=0.5, seed=0)
    assert str(error.value) == f"{path}: row 2: {message}"


def test_a_preference_prompts_system_flag_decides_the_pair_mode(tmp_path):
    prompt = [{"role": "system", "content": "/no_think"}, {"role": "user", "content": "2+2?"}]
    path = _write(tmp_path / "p.jsonl", [{"prompt": prompt, "chosen": "4", "rejected": "5", "mode": "think"}])
    with pytest.raises(DataError, match=re.escape(f"{path}: row 1: field 'prompt[0].content': says /no_think, "
                                                  "but field 'mode' says /think")):
        data.load_preferences([{"name": "preferences", "path": path}], no_think_fraction=0.5, seed=0)


@pytest.mark.parametrize("loader, name, row, field", [
    (data.load_conversations, "messages", _chat("4", mode="think"), "messages[1]"),
    (data.load_conversations, "messages", _chat("4", system="/think"), "messages[2]"),
    (data.load_preferences, "preferences", {"prompt": "2+2?", "chosen": "4", "rejected": "5", "mode": "think"},
     "chosen[0]"),
])
def test_think_rows_without_reasoning_are_refused_unless_the_recipe_allows_them(tmp_path, loader, name, row, field):
    path = _write(tmp_path / "t.jsonl", [row])
    with pytest.raises(DataError) as error:
        loader([{"name": name, "path": path}], no_think_fraction=0.5, seed=0)
    assert str(error.value).startswith(f"{path}: row 1: field '{field}': a /think reply without reasoning")
    assert "allow_think_without_reasoning: true" in str(error.value)
    ds = loader([{"name": name, "path": path}], no_think_fraction=0.5, seed=0, allow_think_without_reasoning=True)
    assert ds["mode"] == ["think"] and data.think_without_reasoning(ds[0]) == field


def test_generated_and_gsm8k_think_rows_carry_reasoning(fixtures):
    for ds in (data.load_conversations([{"name": "arithmetic", "rows": 50}], no_think_fraction=0.5, seed=0),
               data.load_preferences([{"name": "arithmetic", "rows": 50}], no_think_fraction=0.5, seed=0),
               data.load_conversations([{"name": "gsm8k", "path": str(fixtures / "gsm8k" / "train.jsonl")}],
                                       no_think_fraction=0.5, seed=0)):
        assert "think" in ds["mode"] and not any(data.think_without_reasoning(row) for row in ds)
