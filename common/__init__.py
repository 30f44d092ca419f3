"""common: the bottom layer every package imports (pretrain, posttrain, rewards) and that imports none of them:
errors, the recipe parser, the chat template and its special tokens, modes, output-dir rules, tokenizer loading.

Importing it installs the bitsandbytes log filter below, so every CLI entry (`posttrain`, `pretrain`) has it
before transformers is imported."""


def _quiet_bitsandbytes_cpu_kernel() -> None:
    """bitsandbytes, imported by transformers (through peft) whenever installed (the `qlora` extra), asks the
    `kernels` package for a CPU 4-bit kernel from the Hub at import, and logs on every command either "Failed to
    load CPU gemm_4bit_forward ... Set trust_remote_code=True" (advice to lower a security default) or, offline,
    "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'": noise about a kernel only
    QLoRA on a CPU would use (bitsandbytes falls back to its own). It is logged at import, before any recipe says
    whether QLoRA runs, so both lines are filtered globally, for that kernel only."""
    import logging

    kernel = ("gemm_4bit_forward from kernels-community", "kernels-community/quantization-bitsandbytes")
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
        logging.getLogger(name).addFilter(lambda record: not any(k in record.getMessage() for k in kernel))


_quiet_bitsandbytes_cpu_kernel()
