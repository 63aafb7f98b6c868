"""Activation maximisation on a small net: the score rises, limits hold, the result is
repeatable."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from service.bundle.preprocess import InputSpec
from service.common.cancellation import Cancellation
from service.insight.maximize import MaximizeParams, Objective, PixelCodec, synthesize

SPEC = InputSpec(height=24, width=24, mean=(122.782, 117.001, 104.298), std=(256.0, 256.0, 256.0))


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 5, 2, 2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        return self.fc(features.mean(dim=(2, 3))), {"conv": features}


@pytest.fixture(scope="module")
def twin() -> nn.Module:
    return Small().eval()


def test_pixels_survive_a_round_trip_through_the_input_encoding():
    codec = PixelCodec(SPEC)
    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)

    x = codec.to_input(pixels)
    low, high = codec.bounds()

    assert np.array_equal(codec.to_pixels(x), pixels)
    assert torch.allclose(
        x[:, 0, 0],
        (torch.tensor(pixels[0, 0], dtype=torch.float32) - torch.tensor(SPEC.mean)) / 256,
    )
    assert (x >= low - 1e-6).all() and (x <= high + 1e-6).all()


@pytest.mark.parametrize(
    "objective", [Objective(class_index=1), Objective(layer="conv", channel=2)]
)
def test_the_score_rises_from_the_start(twin, objective):
    result = synthesize(twin, PixelCodec(SPEC), objective, MaximizeParams(steps=30, lr=0.1))

    assert result.steps == 30
    assert result.image.shape == (24, 24, 3) and result.image.dtype == np.uint8
    assert result.score_end > result.score_start
    if objective.class_index is not None:
        assert result.probability_end > result.probability_start


def test_same_parameters_same_image_and_the_seed_changes_it(twin):
    params = MaximizeParams(steps=5)
    first = synthesize(twin, PixelCodec(SPEC), Objective(class_index=0), params)
    again = synthesize(twin, PixelCodec(SPEC), Objective(class_index=0), params)
    other = synthesize(
        twin, PixelCodec(SPEC), Objective(class_index=0), params.model_copy(update={"seed": 1})
    )

    assert np.array_equal(first.image, again.image)
    assert not np.array_equal(first.image, other.image)


def test_a_busy_machine_gets_the_same_image(twin):
    """Only ``steps`` ends the ascent: a synthesis slowed down (here, every pass held 20 ms,
    as a loaded machine would) runs every step and returns the image a quiet one does."""
    params = MaximizeParams(steps=6)
    quiet = synthesize(twin, PixelCodec(SPEC), Objective(class_index=0), params)
    slowed = Cancellation(on_batch=lambda: time.sleep(0.02))
    busy = synthesize(twin, PixelCodec(SPEC), Objective(class_index=0), params, slowed)

    assert busy.steps == quiet.steps == 6
    assert np.array_equal(busy.image, quiet.image)


def test_the_former_time_limit_is_no_parameter_of_the_ascent():
    with pytest.raises(ValueError, match="max_seconds"):
        MaximizeParams(steps=300, max_seconds=1e-6)


def test_parameters_outside_their_bounds_are_refused():
    with pytest.raises(ValueError, match="less than or equal to 300"):
        MaximizeParams(steps=301)


def test_the_twin_is_left_as_it_was(twin):
    flags = [p.requires_grad for p in twin.parameters()]

    synthesize(twin, PixelCodec(SPEC), Objective(class_index=0), MaximizeParams(steps=2))

    assert [p.requires_grad for p in twin.parameters()] == flags
    assert all(p.grad is None for p in twin.parameters())
