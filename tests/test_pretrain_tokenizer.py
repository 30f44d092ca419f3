"""`pretrain tokenizer` and `pretrain tokenizer-eval`."""

import json

import pytest
from transformers import AutoTokenizer

from pretrain.cli import main
from pretrain.tokenizer_eval import evaluate_text


def test_tokenizer_command_trains_a_bpe_with_the_hybrid_template(tmp_path, web_text, capsys):
    assert main(["tokenizer", "--files", str(web_text), "--vocab_size", "400",
                 "--output", str(tmp_path / "tok")]) == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == 402 and "{% generation %}" in tok.chat_template  # 400 + the two think tags
    assert "402-token tokenizer" in capsys.readouterr().out


def test_tokenizer_command_needs_files_or_llama3(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["tokenizer", "--output", str(tmp_path / "tok")])
    assert "--files" in capsys.readouterr().err and not (tmp_path / "tok").exists()


def test_fertility_and_continued_words_count_tokens_per_word(tiny_tokenizer):
    """A word the vocabulary knows is one token; a rare word splits; zh counts characters."""
    text = "the market"  # both frequent in the web corpus: whole tokens in a 512-token BPE
    r = evaluate_text(tiny_tokenizer, text, "en")
    assert r["words"] == 2 and r["unit"] == "word"
    rare = evaluate_text(tiny_tokenizer, "Xylophonically quizzacious", "en")
    assert rare["continued_words"] == 1.0 and rare["fertility"] > 3
    assert r["fertility"] < rare["fertility"]
    assert r["tokens"] == len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    zh = evaluate_text(tiny_tokenizer, "人人生而自由。", "zh")
    assert zh["unit"] == "character" and zh["words"] == 6  # the full stop is not a word
    assert zh["fertility"] >= 2 and zh["continued_words"] == 1.0  # byte-level fallback: 3 bytes per character


def test_tokenizer_eval_reports_every_udhr_language(tiny_tokenizer_dir, fixtures, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["tokenizer-eval", str(tiny_tokenizer_dir), "--data", str(fixtures / "udhr"), "--json", str(out)]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"en", "fr", "de", "ru", "hi", "zh", "ja", "th"}
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["lang", "unit", "words", "tokens", "fertility", "continued"]
    # an English-only tokenizer: cheapest on English, far costlier on other scripts
    assert results["en"]["fertility"] < results["fr"]["fertility"] < results["ru"]["fertility"]
    assert results["hi"]["continued_words"] > 0.95 and results["ja"]["unit"] == "character"
