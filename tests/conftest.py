"""Shared fixtures: the project's own data (fixtures/ in the real datasets' formats, generated web text), a real
byte-level tokenizer trained by `pretrain`, and a saved tiny SmolLM3 checkpoint. Nothing outside the repository
is read, and the Hugging Face Hub is never contacted (HF_HUB_OFFLINE): a test that names a Hub dataset sees
what an offline user sees."""

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub and datasets at import: set before either loads

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The tiny recipes' choice (recipes/tiny/pretrain.yaml): SmolLM3's own /think instructions are hundreds of tokens
# of a tiny vocabulary, more than a tiny row's whole max_length.
TINY_INSTRUCTIONS = {"think": "Think step by step in <think> tags, then answer.", "no_think": "Answer directly."}


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def web_text(tmp_path_factory) -> Path:
    """A text file of the generated web corpus (the tiny recipe's general-text source), documents separated by a
    blank line."""
    from pretrain.corpus import web_documents

    path = tmp_path_factory.mktemp("web") / "web.txt"
    path.write_text("\n\n".join(web_documents(1500)))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, web_text) -> Path:
    from pretrain.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_bpe([web_text], vocab_size=512, output_dir=out, default_instructions=TINY_INSTRUCTIONS)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def chatml_tokenizer_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """The tiny tokenizer without its think tags: ChatML tokens and nothing else special, the way SmolLM2's and
    most chat models' vocabularies are, so `<think>` spells as several pieces."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in ("<think>", "</think>")]
    out = tmp_path_factory.mktemp("chatml_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<|endoftext|>",
                            eos_token="<|im_end|>", pad_token="<|pad|>").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A randomly initialised `tiny` preset saved as a transformers checkpoint (stages start from a path)."""
    import torch
    from transformers import SmolLM3ForCausalLM

    from pretrain.presets import model_config

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_model")
    SmolLM3ForCausalLM(model_config("tiny", tokenizer=tiny_tokenizer)).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out
