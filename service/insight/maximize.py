"""Activation maximisation: an input image that a class or a channel responds to most.

Simonyan, Vedaldi & Zisserman (2014): start from noise (``START_GRID``) and climb the gradient
of the chosen score with respect to the pixels, through the differentiable twin. Left alone that
finds adversarial high-frequency noise, so every step is regularised the usual ways (Mahendran &
Vedaldi 2015, Yosinski et al. 2015): an L2 penalty on the (standardised) image, a
total-variation penalty on neighbouring pixels, a random shift of the image before each forward
pass (jitter), a light blur every few steps, and clipping to the valid pixel range. Adam takes
the steps.

The score is the class's logit (the unnormalised score, as Simonyan et al. use: the softmax
could rise by pushing the other classes down), or the mean activation of one channel of a layer.

Every pass of the twin goes through the work's ``Cancellation`` first, so a synthesis whose
client has gone stops at its next step. Nothing else stops it: the ascent always runs its
``steps``, so the same parameters give the same image however busy the machine is (what it may
cost is bounded by ``steps``, counted in forward passes like every explanation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from service.bundle.preprocess import InputSpec, PixelAffine
from service.common.cancellation import Cancellation
from service.common.twin import input_gradients

# The start: random colours on a coarse grid, enlarged smoothly, plus pixel noise. White noise
# alone leaves some first-layer channels (smooth colour detectors) at zero everywhere, where
# their gradient is zero too and the ascent could never start.
START_GRID = 8
START_NOISE = 0.1  # standard deviation of the pixel noise, in standardised units
_BLUR = torch.tensor([1.0, 2.0, 1.0]) / 4.0


class MaximizeParams(BaseModel):
    """How to synthesise: the step budget, regularisation and randomness."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(48, ge=1, le=300, description="gradient steps")
    lr: float = Field(0.05, gt=0, le=1, description="Adam step size, in standardised input units")
    l2: float = Field(1e-3, ge=0, le=1, description="weight of the L2 penalty on the image")
    tv: float = Field(0.5, ge=0, le=100, description="weight of the total-variation penalty")
    jitter: int = Field(
        4, ge=0, le=16, description="largest random shift (pixels) before each step"
    )
    blur_every: int = Field(
        4, ge=0, le=100, description="blur the image every this many steps (0: never)"
    )
    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="seed of the starting noise and the jitter"
    )

    def planned_passes(self) -> int:
        """The passes a synthesis runs: the score before, one per step, the score after."""
        return self.steps + 2


@dataclass(frozen=True)
class Objective:
    """What to maximise: a class's logit (``class_index``) or a channel's mean activation."""

    class_index: int | None = None
    layer: str | None = None
    channel: int | None = None

    def score(self, logits: torch.Tensor, activations: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N,)`` scores."""
        if self.class_index is not None:
            return logits[:, self.class_index]
        if self.layer is None or self.channel is None:
            raise ValueError("an objective is a class_index, or a layer and a channel")
        return activations[self.layer][:, self.channel].mean(dim=(1, 2))


@dataclass(frozen=True)
class Synthesis:
    """The image (``(H, W, 3)`` uint8, the model's input size) and how the score moved: at the
    starting noise and at the returned (8-bit) image; class probabilities too for a class."""

    image: np.ndarray
    score_start: float
    score_end: float
    probability_start: float | None
    probability_end: float | None
    steps: int
    elapsed_ms: float


class PixelCodec:
    """Between 8-bit RGB pixels and model input, as ``meta.json["input"]`` says: the service's
    one affine (``PixelAffine``), both ways."""

    def __init__(self, spec: InputSpec) -> None:
        self.affine = PixelAffine(spec)
        self.size = (spec.height, spec.width)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Smallest and largest input value per channel, ``(3, 1, 1)`` each."""
        return self.affine.bounds()

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """``(3, H, W)`` input -> ``(H, W, 3)`` uint8 RGB."""
        pixels = self.affine.to_pixels(x.detach())
        return pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()

    def to_input(self, pixels: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` input."""
        return self.affine.to_input(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1))


def synthesize(
    twin: Any,
    codec: PixelCodec,
    objective: Objective,
    params: MaximizeParams,
    cancellation: Cancellation | None = None,
) -> Synthesis:
    """Run the ascent (blocking; seconds). Gradient passes hold the twin one step at a time, so
    other gradient requests interleave. ``Cancelled`` at the next step once ``cancellation``
    is cancelled."""
    cancellation = cancellation or Cancellation()
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(params.seed)
    height, width = codec.size
    low, high = codec.bounds()
    coarse = low + (high - low) * torch.rand(1, 3, START_GRID, START_GRID, generator=generator)
    x = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    x = torch.maximum(
        torch.minimum(x + START_NOISE * torch.randn(x.shape, generator=generator), high), low
    )
    start = _evaluate(twin, codec.to_input(codec.to_pixels(x[0]))[None], objective, cancellation)
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=params.lr)
    for step in range(params.steps):
        shift = torch.randint(-params.jitter, params.jitter + 1, (2,), generator=generator).tolist()
        cancellation.batch()  # outside the twin: a job may give its turn away here
        with input_gradients(twin):
            logits, activations = twin(torch.roll(x, shifts=shift, dims=(2, 3)))
            score = objective.score(logits, activations)[0]
            loss = -score + params.l2 * x.pow(2).mean() + params.tv * _total_variation(x)
            optimizer.zero_grad()
            loss.backward()
        optimizer.step()
        with torch.no_grad():
            if params.blur_every and (step + 1) % params.blur_every == 0:
                x.copy_(_blur(x))
            x.copy_(torch.maximum(torch.minimum(x, high), low))
    image = codec.to_pixels(x[0])
    end = _evaluate(twin, codec.to_input(image)[None], objective, cancellation)
    return Synthesis(
        image=image,
        score_start=start[0],
        score_end=end[0],
        probability_start=start[1],
        probability_end=end[1],
        steps=params.steps,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


def _evaluate(
    twin: Any, x: torch.Tensor, objective: Objective, cancellation: Cancellation
) -> tuple[float, float | None]:
    cancellation.batch()
    with torch.no_grad():
        logits, activations = twin(x)
    probability = None
    if objective.class_index is not None:
        probability = float(torch.softmax(logits.double(), dim=1)[0, objective.class_index])
    return float(objective.score(logits, activations)[0]), probability


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertical and horizontal neighbours."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(
        2
    ).mean()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """A 3x3 binomial blur per channel, edges replicated."""
    kernel = (_BLUR[:, None] * _BLUR[None, :]).to(x.dtype).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
