"""What this machine computes fast, for the recipe settings left to it (`bf16: auto`, `mixed_precision: auto`,
`attn_implementation: auto`)."""

from __future__ import annotations

import torch


def bf16_pays() -> bool:
    """Whether bf16 autocast makes training faster here: on CUDA GPUs that support bf16, and on CPUs with native bf16
    (avx512_bf16 or AMX). Any other CPU emulates it. Measured on the tiny model's pretraining step (16 x 256 tokens,
    fwd + bwd, 2 cores of an AMD EPYC with avx512_bf16): fp32 0.31 s, bf16 0.24 s; the same machine held to AVX2
    (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2): fp32 0.33 s, bf16 4.3 s."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    # torch exposes the CPU's features only through these private helpers (torch.cpu, torch >= 2.3); the kernels
    # must also be allowed to use them (ATEN_CPU_CAPABILITY=avx2 holds them back)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return bool(native) and torch.backends.cpu.get_cpu_capability() == "AVX512"


def attention_kernel() -> str:
    """`eager` on a CPU with native bf16, where `bf16: auto` autocasts, else `sdpa`. Under CPU bf16 autocast torch's
    sdpa kernel is the slow part of a small model's step: the tiny SFT step (head dim 32, 64 rows) 0.47 s with sdpa,
    0.34 s eager (bench/sft_step.py); in fp32 sdpa is 0-6% faster. GPU recipes name their kernel (flash_attention_2)."""
    return "eager" if bf16_pays() and not torch.cuda.is_available() else "sdpa"


# Recipe keys that take `auto`, and what it means on this machine; resolved before the key's type is checked, so the
# run record holds the value used.
AUTO = {
    "bf16": bf16_pays,
    "mixed_precision": lambda: "bf16" if bf16_pays() else "no",
    "attn_implementation": attention_kernel,
}
