"""RLVR on a GPU: bf16 with transformers generation, vLLM colocated, and `posttrain serve` + `vllm_mode: server`.

Run with `pytest -m gpu -rs`: without CUDA, vllm or a second GPU each test is skipped with the reason.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from trl.import_utils import is_vllm_available

from test_rlvr import _recipe

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
needs_vllm = pytest.mark.skipif(not is_vllm_available(), reason="needs vllm: pip install 'posttrain[vllm]'")
needs_two_gpus = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs: one for the rollout server, one for the trainer"
)

# vLLM sized for the tiny model: a short context keeps its KV cache small.
VLLM = {"use_vllm": True, "vllm_max_model_length": 512, "max_completion_length": 16}


def _run(argv, env=None, timeout=600):
    """`python -m posttrain rlvr ...` in a fresh process (its own CUDA context and devices)."""
    result = subprocess.run(
        [sys.executable, "-m", "posttrain", "rlvr", *argv], env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _check_output(out):
    history = json.loads((out / "log_history.json").read_text())
    steps = [h for h in history if "completions/mean_length" in h]
    assert len(steps) == 2
    for mode in ("think", "no_think"):
        assert any(f"completions/{mode}/mean_length" in h for h in steps)


@needs_cuda
def test_rlvr_bf16_with_transformers_generation(tiny_model_dir, tmp_path):
    _run(_recipe(tmp_path, tiny_model_dir, bf16=True))
    _check_output(tmp_path / "rlvr")


@needs_vllm
@needs_cuda
def test_rlvr_vllm_colocate(tiny_model_dir, tmp_path):
    _run(_recipe(tmp_path, tiny_model_dir, bf16=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.2, **VLLM))
    _check_output(tmp_path / "rlvr")


@needs_two_gpus
@needs_vllm
@needs_cuda  # the nearest mark is checked first: the most basic reason is reported
def test_serve_and_rlvr_in_server_mode(tiny_model_dir, tmp_path):
    with socket.socket() as s:  # a free port for the server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "posttrain", "serve", "--model", str(tiny_model_dir), "--port", str(port),
         "--gpu_memory_utilization", "0.3", "--max_model_len", "512", "--enforce_eager", "true"],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "1"},
    )
    try:
        argv = _recipe(tmp_path, tiny_model_dir, bf16=True, vllm_mode="server", vllm_server_port=port, **VLLM)
        _run(argv, env={"CUDA_VISIBLE_DEVICES": "0"})  # the trainer waits for the server (vllm_server_timeout)
        _check_output(tmp_path / "rlvr")
    finally:
        server.terminate()
        server.wait(timeout=60)
