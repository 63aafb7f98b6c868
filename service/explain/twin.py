"""Tensors for the gradient methods: one input as a batch that requires grad, and a saliency map
from input gradients. The twin itself is driven through ``service.common.twin.input_gradients``.
"""

from __future__ import annotations

import numpy as np
import torch


def as_batch(x: np.ndarray) -> torch.Tensor:
    """``(3, H, W)`` float32 array as a fresh ``(1, 3, H, W)`` tensor that requires grad."""
    return torch.from_numpy(np.array(x[None], dtype=np.float32)).requires_grad_(True)


def channel_max_abs(attributions: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` attributions -> ``(H, W)``: largest magnitude over channels (Simonyan
    et al. 2014)."""
    return attributions.detach().abs().amax(dim=1)[0].cpu().numpy()
