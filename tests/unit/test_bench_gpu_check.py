"""bench/gpu_check.py on a machine without CUDA: a clear message and exit code 2, nothing
started. (Its CPU-against-CPU run, ``--providers CPUExecutionProvider``, starts two services:
minutes, so it is a documented command, not a test.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available(),
    reason="CUDA is here: the script would run its comparison",
)
def test_without_cuda_it_says_so_and_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert "no CUDA on this machine" in result.stderr
    assert "CUDAExecutionProvider" in result.stderr  # says what ONNX Runtime lacks
    assert "--providers CPUExecutionProvider" in result.stderr  # and how to check the script
    assert "python -m service" not in result.stdout  # no service was started
