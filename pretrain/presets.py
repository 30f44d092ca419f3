"""Model presets: `transformers.SmolLM3Config`s (GQA, tied embeddings, NoPE on every 4th layer).

`smollm3-3b` is the published SmolLM3-3B architecture (3.08B parameters). `tiny` is the same structure
shrunk until 2 CPU cores train it in minutes: docs/facts.md has the measurement that a ~0.8M-parameter model
(4 layers x 128 hidden) learns multi-digit addition with a scratchpad in ~1k steps where a 4.6M one did
not, so `tiny` sits there. `small` is a middle point for longer CPU runs.
"""

from __future__ import annotations

from transformers import SmolLM3Config

from common.errors import UserError

PRESETS: dict[str, dict] = {
    "smollm3-3b": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=65536,
        rope_parameters={"rope_type": "default", "rope_theta": 2_000_000.0},
        no_rope_layer_interval=4, tie_word_embeddings=True, initializer_range=0.02, rms_norm_eps=1e-6,
        bos_token_id=128000, eos_token_id=128012, pad_token_id=128004,  # SmolLM3: eos = <|im_end|>
    ),
    "small": dict(
        hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        no_rope_layer_interval=4, tie_word_embeddings=True, initializer_range=0.02, rms_norm_eps=1e-6,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    ),
    "tiny": dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        no_rope_layer_interval=4, tie_word_embeddings=True, initializer_range=0.02, rms_norm_eps=1e-6,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    ),
}


def model_config(preset: str, tokenizer=None, **overrides) -> SmolLM3Config:
    """The preset's config; with a tokenizer, its vocab size and special token ids are used
    (the 3B keeps its 128,256 rows, the size of the Llama-3 vocabulary)."""
    if preset not in PRESETS:
        raise UserError(f"unknown model preset {preset!r} (known: {', '.join(PRESETS)})")
    kwargs = {**PRESETS[preset], **overrides}
    if tokenizer is not None:
        kwargs.setdefault("vocab_size", len(tokenizer))
        kwargs.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    config = SmolLM3Config(**kwargs)
    # NoPE on every 4th layer (layers 3, 7, ...), as SmolLM3: 1 = RoPE, 0 = no position embedding.
    config.no_rope_layers = [int((i + 1) % config.no_rope_layer_interval != 0) for i in range(config.num_hidden_layers)]
    return config
