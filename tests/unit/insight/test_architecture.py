"""Receptive fields and filters read from an exported twin's graph, on small nets worked by hand.

The net mirrors dlib's ResNet in miniature: a strided conv stem with a max-pool, a
downsampling residual block (strided conv branch, 2x2 average-pool shortcut zero-padded in
channels), and a layer that pads explicitly before an unpadded conv. Each analytic field is
checked against the numbers worked out below and against the gradient of a unit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from receptive_field_probe import gradient_extent
from torch import nn

from service.insight.architecture import (
    ArchitectureError,
    layer_filters,
    receptive_fields,
)

SIZE = 35


def export(net: nn.Module, channels: int, size: int) -> torch.nn.Module:
    """``net`` as a twin is: a ``torch.export`` program with a dynamic batch, as a module."""
    example = torch.randn(2, channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=64)
    return torch.export.export(net.eval(), (example,), dynamic_shapes=({0: batch},)).module()


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 5, 2, 0)
        self.conv1 = nn.Conv2d(4, 8, 3, 2, 0)
        self.conv2 = nn.Conv2d(8, 8, 3, 1, 1)
        self.head = nn.Conv2d(8, 8, 3, 1, 0)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor):
        stem = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        branch = self.conv2(F.relu(self.conv1(stem)))
        block = F.relu(branch + F.pad(F.avg_pool2d(stem, 2, 2), (0, 0, 0, 0, 0, 4)))
        head = F.relu(self.head(F.pad(block, (1, 1, 1, 1))))
        return self.fc(head.mean(dim=(2, 3))), {"stem": stem, "block": block, "head": head}


# (size, jump, start, first, last) per layer, by hand from the rule in architecture.py:
# stem conv 5/2: jump 2, pixels 0..4 for unit 0; pool 3/2: jump 4, 0..8; units 0..6 reach 0..32.
# block: conv 3/2 -> jump 8, 0..16; conv 3/1 pad 1 -> -8..24; shortcut pool 2/2 -> 0..12; union.
# head: 1 pixel of padding, then conv 3 -> -16..32.
EXPECTED = {
    "stem": (9, 4, 4.0, 0, 32),
    "block": (33, 8, 8.0, 0, 32),
    "head": (49, 8, 8.0, 0, 32),
}


@pytest.fixture(scope="module")
def twin() -> torch.nn.Module:
    torch.manual_seed(0)
    return export(TinyResNet(), 3, SIZE)


def test_fields_follow_the_kernel_stride_and_padding_arithmetic(twin):
    fields = receptive_fields(twin)

    assert list(fields) == ["stem", "block", "head"]
    for name, (size, jump, start, first, last) in EXPECTED.items():
        for axis in (fields[name].rows, fields[name].cols):
            assert (axis.size, axis.jump, axis.start, axis.first, axis.last) == (
                size,
                jump,
                start,
                first,
                last,
            ), name
    assert fields["stem"].shape == (4, 7, 7)
    assert fields["block"].shape == (8, 3, 3)
    assert fields["stem"].box(3, 3) == (12, 12, 21, 21)


def test_a_units_gradient_fills_its_analytic_field_and_nothing_beyond(twin):
    torch.manual_seed(1)
    inputs = torch.randn(8, 3, SIZE, SIZE)

    for name, field in receptive_fields(twin).items():
        for row, col in ((field.shape[1] // 2, field.shape[2] // 2), (0, 0)):
            measured = gradient_extent(twin, inputs, name, row, col)
            assert measured == (field.rows.seen(row), field.cols.seen(col)), (name, row, col)


def test_zero_weights_shrink_the_measured_field_inside_the_analytic_one():
    # A 5x5 filter whose outer ring is zero acts as a 3x3 one: the architecture promises 5
    # pixels, the weights use 3. The analytic field is an upper bound, reached unless
    # weights are exactly zero.
    class Ring(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 5, 1, 0, bias=False)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[..., 1:4, 1:4] = 1.0

        def forward(self, x):
            out = self.conv(x)
            return out.mean(dim=(2, 3)), {"conv": out}

    twin = export(Ring(), 1, 15)
    field = receptive_fields(twin)["conv"]
    rows, cols = gradient_extent(twin, torch.randn(2, 1, 15, 15), "conv", 5, 5)

    assert field.rows.span(5) == (5, 9)
    assert rows == cols == (6, 8)


def test_filters_are_the_last_convolution_before_each_layer(twin):
    assert tuple(layer_filters(twin, "stem").shape) == (4, 3, 5, 5)
    assert torch.equal(layer_filters(twin, "block"), twin.conv2.weight.detach())
    assert torch.equal(layer_filters(twin, "head"), twin.head.weight.detach())


def test_an_op_that_resamples_is_refused_by_name():
    class Upsampling(nn.Module):
        def forward(self, x):
            up = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return up.mean(dim=(2, 3)), {"up": up}

    twin = export(Upsampling(), 3, 8)

    with pytest.raises(ArchitectureError, match="not supported"):
        receptive_fields(twin)
