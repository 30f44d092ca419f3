"""pretrain: the compact pretraining module that produces the SmolLM3-style base model."""
