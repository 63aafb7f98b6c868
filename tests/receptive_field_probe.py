"""A unit's receptive field measured by its gradient: the input pixels that can move it at all."""

from __future__ import annotations

import torch


def gradient_extent(
    twin, inputs: torch.Tensor, layer: str, row: int, col: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """First and last input row and column (inclusive) where the gradient of unit ``(row, col)``
    of ``layer`` (summed over its channels) is non-zero for any of ``inputs`` ``(N, 3, H, W)``.

    ReLUs and max-pools pass gradient only where they are active, so one input can show less
    than the field; every input is separate (eval mode), and their union shows more of it.
    """
    x = inputs.clone().requires_grad_(True)
    with torch.enable_grad():
        _, activations = twin(x)
        (gradient,) = torch.autograd.grad(activations[layer][:, :, row, col].sum(), x)
    support = gradient.abs().sum(dim=(0, 1)) > 0
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    if len(rows) == 0:
        raise AssertionError(f"unit ({row}, {col}) of {layer} has a zero gradient for every input")
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))
