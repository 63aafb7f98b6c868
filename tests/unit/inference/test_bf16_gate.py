"""The bfloat16 gate of the twin's gradient passes: the decision both ways, the real twin."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle.checks import load_twin, probe_batch
from service.bundle.format import read_meta
from service.bundle.preprocess import Preprocessor
from service.common.twin import input_gradients, runs_bf16
from service.inference.bf16_gate import (
    MIN_SPEARMAN,
    choose_twin_precision,
    decide,
    map_parity,
    saliency,
)
from service.inference.precision_probe import CpuInfo

AVX2 = CpuInfo("AMD EPYC 7B12", ("avx2",))
AMX = CpuInfo("Intel(R) Xeon(R) Platinum 8480+", ("avx2", "avx512_bf16", "amx_bf16"))


@pytest.fixture(scope="module")
def probe(default_bundle: Path) -> np.ndarray:
    return probe_batch(Preprocessor(read_meta(default_bundle).input))


@pytest.fixture()
def twin(default_bundle: Path):
    """A twin of the test's own: the gate marks it."""
    return load_twin(default_bundle)


def test_a_cpu_without_bfloat16_stays_fp32_without_measuring():
    choice = decide(AVX2, None)

    assert (choice.dtype, choice.spearman) == ("fp32", None)
    assert choice.reason == "the CPU has no bfloat16 arithmetic (avx512_bf16, amx_bf16)"


@pytest.mark.parametrize(
    ("spearman", "dtype"),
    [(0.995, "bf16"), (MIN_SPEARMAN, "bf16"), (0.983, "fp32"), (math.nan, "fp32")],
)
def test_a_bfloat16_cpu_uses_it_only_where_the_maps_kept_their_ranks(spearman, dtype):
    choice = decide(AMX, spearman)

    assert choice.dtype == dtype
    assert choice.reason.startswith("avx512_bf16, amx_bf16: bfloat16 maps' rank correlation")


def test_the_gate_on_the_real_twin_passes_and_fails_by_its_threshold(twin, probe):
    measured = map_parity(twin, probe)
    assert 0.5 < measured < 1.0  # bfloat16 changes the maps, yet ranks their pixels alike

    passed = choose_twin_precision(twin, probe, AMX, threshold=measured - 0.01)
    assert passed.dtype == "bf16" and passed.spearman == pytest.approx(measured)
    assert runs_bf16(twin)
    with input_gradients(twin) as forward:  # the sampled gradient passes now run in bfloat16
        assert forward.bf16
        assert forward(torch.from_numpy(probe)).dtype == torch.float32

    failed = choose_twin_precision(twin, probe, AMX, threshold=measured + 0.001)
    assert failed.dtype == "fp32" and f"{measured:.3f}, below" in failed.reason
    assert not runs_bf16(twin)
    with input_gradients(twin) as forward:
        assert not forward.bf16


def test_bfloat16_maps_differ_from_fp32_ones_and_fp32_is_repeatable(twin, probe):
    fp32 = saliency(twin, probe[0], False)

    np.testing.assert_array_equal(fp32, saliency(twin, probe[0], False))
    assert not np.array_equal(fp32, saliency(twin, probe[0], True))


def test_without_the_flags_the_twin_is_not_tried(twin, probe):
    choice = choose_twin_precision(twin, probe, AVX2)

    assert (choice.dtype, choice.spearman) == ("fp32", None) and not runs_bf16(twin)
