"""Shared fixtures: a real byte-level tokenizer trained by `pretrain` and a saved tiny SmolLM3 checkpoint."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it sits beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, shared_data) -> Path:
    from pretrain.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_bpe([shared_data / "text" / "tinyshakespeare.txt"], vocab_size=512, output_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


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
