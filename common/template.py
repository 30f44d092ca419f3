"""The hybrid chat template: where it lives, and how a tokenizer is made to use it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from common.errors import UserError

TEMPLATE_NAME = "smollm3_hybrid.jinja"
# Tokens the template emits; each must be ONE token of the vocabulary (check-template verifies it).
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_THINK = "<think>\n\n</think>\n"  # what /no_think turns and generation prompts start with
MODES = ("think", "no_think")  # the manual switch: every stage's mixture and every evaluation covers both
AUTO_MODE = "auto_think"  # adaptive: the model decides, an empty think block being its direct answer
ALL_MODES = (*MODES, AUTO_MODE)


def mode_system_message(mode: str) -> dict:
    """The system message that sets a prompt's mode and carries nothing else: exactly "/think", "/no_think" or
    "/auto_think" (the template honours the flag). RLVR and evaluation prompts start with it."""
    return {"role": "system", "content": f"/{mode}"}


def template_path() -> Path:
    """The shipped template: templates/ in a source checkout, else the installed package data."""
    source = Path(__file__).resolve().parents[1] / "templates" / TEMPLATE_NAME
    if source.is_file():
        return source
    return Path(str(resources.files("common.templates") / TEMPLATE_NAME))


def load_template(path: str | Path | None = None) -> str:
    return Path(path or template_path()).read_text()


def with_default_instructions(default_instructions: dict | None) -> str:
    """The project template, its default custom instructions set to the recipe's {think: ..., no_think: ...}
    (each optional). They are the template's `default_think_instructions` / `default_no_think_instructions`
    kwargs, given defaults in the template itself, so every later render (TRL's trainers, evaluation, serving
    the checkpoint) uses them without passing kwargs. The format is SmolLM3's either way; only that text differs."""
    lines = []
    for mode, text in (default_instructions or {}).items():
        if mode not in MODES or not isinstance(text, str) or not text.strip():
            raise UserError(f"recipe key 'default_instructions': expected {{think: text, no_think: text}}, "
                            f"got {default_instructions!r}")
        name = f"default_{mode}_instructions"
        lines.append(f"{{%- set {name} = {name} | default({json.dumps(text)}) -%}}\n")
    return "".join(lines) + load_template()


def is_project_template(template: str | None) -> bool:
    """The project template, with or without default instructions set by `with_default_instructions`."""
    return bool(template) and template.endswith(load_template())


def attach_template(tokenizer, default_instructions: dict | None = None):
    """Give `tokenizer` the hybrid template (see `with_default_instructions`), `<|im_end|>` as eos (the end of
    every trained turn) and a pad token distinct from eos (so padding never masks a trained eos). Returns the
    tokenizer."""
    tokenizer.chat_template = with_default_instructions(default_instructions)
    tokenizer.eos_token = EOS_TOKEN
    if tokenizer.pad_token is None or tokenizer.pad_token == EOS_TOKEN:
        tokenizer.pad_token = PAD_TOKEN if PAD_TOKEN in tokenizer.get_vocab() else tokenizer.unk_token or EOS_TOKEN
    return tokenizer
