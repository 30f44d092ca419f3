"""posttrain: train hybrid reasoning (/think and /no_think) language models the SmolLM3 way, over TRL."""

import common  # noqa: F401  (installs the bitsandbytes log filter before transformers is imported)

__version__ = "0.1.0"
