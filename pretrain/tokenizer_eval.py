"""`pretrain tokenizer-eval DIR --data TEXTS [--json out.json]`: how well a tokenizer covers each language.

Per text in a folder of `<lang>.txt` files holding the same text in each language (the Universal Declaration
of Human Rights is the usual choice: the UN publishes it in hundreds of languages, free of copyright):
- fertility: tokens per word (1.0 = one token per word; higher = longer sequences, costlier training);
- continued-word proportion: share of words split into 2 or more tokens.

The whole text is tokenized once and each token is assigned to the words its character span overlaps
(offset mapping), so tokens are counted in context, with the leading space a byte-level BPE glues to a
word. A word is a run of letters, marks and digits (`[\\p{L}\\p{M}\\p{N}]+`: a Devanagari vowel sign stays
inside its word; punctuation is not a word). Chinese, Japanese and Thai write no spaces between words and
no segmenter ships here, so for zh, ja and th each user-perceived character (grapheme cluster) counts as
a word: their fertility is tokens per character, not comparable with the other languages' figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import regex

from common.errors import UserError
from common.tokenizers import load_pretrained_tokenizer

UNSEGMENTED = {"zh", "ja", "th"}  # no spaces between words: counted per grapheme cluster
WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")
CHARACTER = regex.compile(r"(?=[\p{L}\p{N}])\X")


def word_spans(text: str, lang: str) -> np.ndarray:
    pattern = CHARACTER if lang in UNSEGMENTED else WORD
    return np.array([m.span() for m in pattern.finditer(text)], dtype=np.int64).reshape(-1, 2)


def evaluate_text(tokenizer, text: str, lang: str) -> dict:
    """Fertility and continued-word proportion of one text."""
    words = word_spans(text, lang)
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    offsets = offsets[offsets[:, 1] > offsets[:, 0]]
    # tokens overlapping word i: start < word end and end > word start (both sorted by position)
    first = np.searchsorted(offsets[:, 1], words[:, 0], side="right")
    last = np.searchsorted(offsets[:, 0], words[:, 1], side="left")
    per_word = np.maximum(last - first, 0)
    covered = np.zeros(len(offsets), dtype=bool)
    for a, b in zip(first, last):
        covered[a:b] = True
    return {
        "words": int(len(words)),
        "tokens": int(covered.sum()),
        "fertility": round(float(covered.sum() / max(len(words), 1)), 4),
        "continued_words": round(float((per_word >= 2).mean()) if len(words) else 0.0, 4),
        "unit": "character" if lang in UNSEGMENTED else "word",
    }


def evaluate(tokenizer_dir: str | Path, data_dir: str | Path) -> dict[str, dict]:
    if not Path(tokenizer_dir).is_dir():
        raise UserError(f"{tokenizer_dir}: tokenizer directory not found")
    files = sorted(Path(data_dir).glob("*.txt"))
    if not files:
        raise UserError(f"{data_dir}: no <lang>.txt files (one file per language, the same text in each)")
    tokenizer = load_pretrained_tokenizer(tokenizer_dir)
    if not tokenizer.is_fast:
        raise UserError(f"{tokenizer_dir}: needs a fast tokenizer (tokenizer.json) for character offsets")
    return {f.stem: evaluate_text(tokenizer, f.read_text(encoding="utf-8"), f.stem) for f in files}


def table(results: dict[str, dict]) -> str:
    lines = [f"{'lang':<6}{'unit':<11}{'words':>7}{'tokens':>8}{'fertility':>11}{'continued':>11}"]
    for lang, r in results.items():
        lines.append(
            f"{lang:<6}{r['unit']:<11}{r['words']:>7}{r['tokens']:>8}"
            f"{r['fertility']:>11.3f}{r['continued_words']:>11.1%}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pretrain tokenizer-eval", description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir")
    parser.add_argument("--data", required=True, help="folder of <lang>.txt files, the same text in each language")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    results = evaluate(args.tokenizer_dir, args.data)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0
