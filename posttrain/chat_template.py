"""The hybrid chat template: where it lives, and how a tokenizer is made to use it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

TEMPLATE_NAME = "smollm3_hybrid.jinja"
# Tokens the template emits; each must be ONE token of the vocabulary (check-template verifies it).
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_THINK = "<think>\n\n</think>\n"  # what /no_think turns and generation prompts start with


def template_path() -> Path:
    """The shipped template: templates/ in a source checkout, else the installed package data."""
    source = Path(__file__).resolve().parents[1] / "templates" / TEMPLATE_NAME
    if source.is_file():
        return source
    return Path(str(resources.files("posttrain.templates") / TEMPLATE_NAME))


def load_template(path: str | Path | None = None) -> str:
    return Path(path or template_path()).read_text()


def attach_template(tokenizer, template: str | None = None):
    """Give `tokenizer` the hybrid template, `<|im_end|>` as eos (the end of every trained turn) and a
    pad token distinct from eos (so padding never masks a trained eos). Returns the tokenizer."""
    tokenizer.chat_template = template or load_template()
    tokenizer.eos_token = EOS_TOKEN
    if tokenizer.pad_token is None or tokenizer.pad_token == EOS_TOKEN:
        tokenizer.pad_token = PAD_TOKEN if PAD_TOKEN in tokenizer.get_vocab() else tokenizer.unk_token or EOS_TOKEN
    return tokenizer
