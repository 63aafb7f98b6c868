"""SmoothGrad (Smilkov et al. 2017): gradient saliency averaged over noisy copies of the input."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import NoiseTunnel, Saliency
from pydantic import Field

from service.common.twin import input_gradients
from service.explain.base import Explainer, MethodParams, sampled_passes
from service.explain.twin import as_batch, channel_max_abs


class SmoothGradParams(MethodParams):
    samples: int = Field(16, ge=1, le=64, description="noisy copies averaged")
    noise: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="noise standard deviation, as a fraction of the "
        "input's value range (max - min)",
    )
    batch_size: int = Field(8, ge=1, le=64, description="noisy copies per forward/backward pass")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="noise seed: same seed, same map")


class SmoothGrad(Explainer):
    """Unsigned, [0, 1]: mean |gradient| over the noisy copies, largest over channels, divided
    by its maximum."""

    name = "smoothgrad"
    title = "SmoothGrad"
    shows = (
        "The gradient averaged over noisy copies of the photo (Smilkov et al. 2017): the same "
        "question as the gradient, with less speckle."
    )
    Params = SmoothGradParams
    signed = False
    units = "mean |d target logit / d input value| over noisy copies, largest over channels"
    cost_hint = "lower samples"
    needs_twin = True
    anytime = True

    @classmethod
    def planned_passes(cls, params: SmoothGradParams, side: tuple[int, int]) -> int:
        return sampled_passes(params.samples, params.batch_size)

    def _attribute(
        self, x: np.ndarray, target: int, params: SmoothGradParams, logits: np.ndarray
    ) -> np.ndarray:
        stdev = params.noise * float(x.max() - x.min())
        # captum draws the noise from torch's global generator: seed it, and restore it after.
        with (
            torch.random.fork_rng(devices=[]),
            input_gradients(self.model.twin, self.model.cancellation) as logits_fn,
        ):
            torch.manual_seed(params.seed)
            saliency = _Reporting(logits_fn, self) if self.watched else Saliency(logits_fn)
            gradients = NoiseTunnel(saliency).attribute(
                as_batch(x),
                target=target,
                nt_type="smoothgrad",
                nt_samples=params.samples,
                nt_samples_batch_size=params.batch_size,
                stdevs=stdev,
                abs=True,
            )
        return channel_max_abs(gradients)


class _Reporting(Saliency):
    """Saliency that also keeps the mean gradient over the noisy copies so far and reports it
    (``Explainer.report_partial``) after each of NoiseTunnel's batches: SmoothGrad's estimate
    as it refines. The gradients, and so the final map, are Saliency's own."""

    def __init__(self, forward: Any, explainer: Explainer) -> None:
        super().__init__(forward)
        self.explainer = explainer
        self.total: torch.Tensor | None = None
        self.count = 0

    def attribute(self, inputs: Any, **kwargs: Any) -> Any:
        gradients = Saliency.attribute.__wrapped__(self, inputs, **kwargs)
        batch = gradients.detach().sum(dim=0, keepdim=True)
        self.total = batch if self.total is None else self.total + batch
        self.count += len(gradients)
        self.explainer.report_partial(channel_max_abs(self.total / self.count))
        return gradients

    # NoiseTunnel calls its method's undecorated ``attribute`` (captum's ``__wrapped__``)
    attribute.__wrapped__ = attribute  # type: ignore[attr-defined]
