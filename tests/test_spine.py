"""The spine: presets, tokenizer, template attached, and one real TRL SFT step with assistant-only loss."""

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, SmolLM3ForCausalLM

from common.template import SPECIAL_TOKENS
from pretrain.presets import model_config


def test_smollm3_3b_preset_has_published_parameter_count():
    config = model_config("smollm3-3b")
    with torch.device("meta"):
        model = SmolLM3ForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert n == 3_075_098_624  # published: 3.08B (tied embeddings counted once)
    assert config.tie_word_embeddings and config.num_key_value_heads == 4
    assert config.no_rope_layers == [0 if (i + 1) % 4 == 0 else 1 for i in range(36)]


def test_tiny_preset_is_small_and_same_structure(tiny_tokenizer):
    config = model_config("tiny", tokenizer=tiny_tokenizer)
    model = SmolLM3ForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert 0.3e6 < n < 5e6
    assert config.vocab_size == len(tiny_tokenizer)
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.no_rope_layers[3] == 0 and config.tie_word_embeddings


def test_bpe_tokenizer_has_hybrid_tokens_and_template(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    for t in SPECIAL_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token not in (None, tok.eos_token)
    assert "{% generation %}" in tok.chat_template
    # digits are split one per token: what lets a tiny model do column arithmetic
    assert tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"]) == list("12345")
    # think tags survive skip_special_tokens (evaluation reads them)
    ids = tok("<think>\nx\n</think>\ny<|im_end|>", add_special_tokens=False)["input_ids"]
    assert "<think>" in tok.decode(ids, skip_special_tokens=True)


def test_tiny_model_trains_one_sft_step_with_assistant_only_loss(tiny_model_dir, tmp_path):
    from trl import SFTConfig, SFTTrainer

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {a}+{b}?"},
                {"role": "assistant", "content": f"<think>\n{a}+{b}={a + b}\n</think>\n\\boxed{{{a + b}}}"},
            ],
            "chat_template_kwargs": {"enable_thinking": True},
        }
        for a, b in [(12, 30), (7, 8)]
    ] + [
        {
            "messages": [
                {"role": "user", "content": f"What is {a}+{b}?"},
                {"role": "assistant", "content": f"\\boxed{{{a + b}}}"},
            ],
            "chat_template_kwargs": {"enable_thinking": False},
        }
        for a, b in [(1, 2), (40, 2)]
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, assistant_only_loss=True,
        bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", learning_rate=1e-2,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    assert len(trainer.train_dataset) == 4  # no row dropped
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed


def test_llama3_tokenizer_built_offline_has_smollm3_ids(tmp_path):
    from pretrain.tokenizer import build_llama3

    tok = build_llama3(tmp_path)
    assert len(tok) == 128_256  # the Llama-3 vocabulary SmolLM3 uses
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<think>", "</think>"]) == [128011, 128012, 128002, 128003]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 128004
    ids = tok("<think>\nx\n</think>\ny<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>\nx\n</think>\ny"  # GRPO decodes this way
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == tok.chat_template
