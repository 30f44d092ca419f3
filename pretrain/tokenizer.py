"""Tokenizers with the hybrid special tokens and chat template attached, saved for `AutoTokenizer`.

- `train_bpe`: a byte-level BPE trained with `tokenizers` on any text files. Digits are split one per
  token, so numbers tokenize the same way everywhere (what lets a tiny model learn column arithmetic).
- `build_llama3`: the SmolLM3 tokenizer (the Llama-3 128,256-token vocabulary) rebuilt offline from the
  tiktoken file in the `llama-models` package (Llama 3 Community License; see LICENSES/llama3.md), with
  SmolLM3's special-token ids.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from common.errors import UserError
from common.template import PAD_TOKEN, attach_template

DOC_TOKEN = "<|endoftext|>"  # bos / document separator in pretraining
CONTROL_TOKENS = [DOC_TOKEN, "<|im_start|>", "<|im_end|>", PAD_TOKEN]
# <think> tags are single tokens but not "special": decoding with skip_special_tokens keeps them.
THINK_TOKENS = ["<think>", "</think>"]


def _finish(tokenizer_object: Tokenizer, output_dir: str | Path, bos: str, pad: str,
            default_instructions: dict | None = None) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, bos_token=bos, pad_token=pad)
    attach_template(tok, default_instructions)
    tok.save_pretrained(output_dir)
    return tok


def bpe_size(vocab_size: int) -> int:
    """The most tokens `train_bpe(vocab_size=...)` gives: the think tags come on top of `vocab_size`."""
    return vocab_size + len(THINK_TOKENS)


def train_bpe(files: Iterable[str | Path], vocab_size: int, output_dir: str | Path, texts: Iterable[str] = (),
              default_instructions: dict | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `files` (plus in-memory `texts`, e.g. rendered chat-template text so the
    fixed system block compresses well) and save it with the hybrid template to `output_dir` (its default
    instructions set to `default_instructions`, see `common.template.with_default_instructions`)."""
    files = [str(f) for f in files]
    for f in files:
        if not Path(f).is_file() or Path(f).stat().st_size == 0:
            raise UserError(f"{f}: tokenizer training file is missing or empty")
    if vocab_size < 300:
        raise UserError(f"tokenizer vocab_size {vocab_size} is too small (byte-level BPE needs >= 300)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CONTROL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )

    def corpus():
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                yield from fh
        yield from texts

    tok.train_from_iterator(corpus(), trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in THINK_TOKENS])
    return _finish(tok, output_dir, bos=DOC_TOKEN, pad=PAD_TOKEN, default_instructions=default_instructions)


# Llama-3's pre-tokenization pattern and SmolLM3's use of its reserved special ids.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = {
    128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128002: "<think>", 128003: "</think>",
    128004: "<|finetune_right_pad_id|>", 128011: "<|im_start|>", 128012: "<|im_end|>",
}


def llama3_tokenizer_file() -> Path:
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the Llama-3 tokenizer needs the `llama-models` package: pip install --no-deps llama-models==0.3.0 tiktoken"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise UserError(f"{path}: tokenizer.model not found in the installed llama-models package")
    return path


def build_llama3(output_dir: str | Path) -> PreTrainedTokenizerFast:
    """The 128,256-token SmolLM3 tokenizer from llama-models' tiktoken file, converted by transformers."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = [LLAMA3_SPECIALS.get(128000 + i, f"<|reserved_special_token_{i}|>") for i in range(256)]
    converter = TikTokenConverter(
        vocab_file=str(llama3_tokenizer_file()), pattern=LLAMA3_PATTERN, extra_special_tokens=specials
    )
    spec = json.loads(converter.converted().to_str())
    for added in spec["added_tokens"]:  # think tags stay single tokens but survive skip_special_tokens
        if added["content"] in THINK_TOKENS:  # (TRL's GRPO decodes completions that way; rewards read the tags)
            added["special"] = False
    tok = Tokenizer.from_str(json.dumps(spec))
    return _finish(tok, output_dir, bos="<|begin_of_text|>", pad="<|finetune_right_pad_id|>")
