"""posttrain: train hybrid reasoning (/think and /no_think) language models the SmolLM3 way, over TRL."""

__version__ = "0.1.0"
