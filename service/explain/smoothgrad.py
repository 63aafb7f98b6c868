"""SmoothGrad (Smilkov et al. 2017): gradient saliency averaged over noisy copies of the input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from captum.attr import NoiseTunnel, Saliency
from pydantic import Field

from service.common.twin import input_gradients
from service.explain.base import Explainer, MethodParams, sampled_passes
from service.explain.convergence import STOP_HELP, Sampling, SplitHalf, Stop, parity_halves
from service.explain.heatmap import split_half_agreement
from service.explain.objective import Objective, Question
from service.explain.twin import (
    CONTRAST_UNITS,
    as_batch,
    channel_max_abs,
    score_head,
    times_input,
)

CONVERGENCE = SplitHalf(agreement=0.9, min_samples=8)
"""``stop=converged``: the mean maps of the even and the odd noisy copies agree enough that two
maps of all the copies so far would reach Spearman 0.9 (Spearman-Brown), with at least 8 copies
in; bench/bench_converged.py measured it (docs/explanations.md)."""


class SmoothGradParams(MethodParams):
    samples: int = Field(
        16, ge=1, le=64, description="noisy copies averaged (at most, with stop=converged)"
    )
    noise: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="noise standard deviation, as a fraction of the "
        "input's value range (max - min)",
    )
    batch_size: int = Field(8, ge=1, le=64, description="noisy copies per forward/backward pass")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="noise seed: same seed, same map")
    stop: Stop = Field("converged", description=STOP_HELP)


class SmoothGrad(Explainer):
    """Unsigned, [0, 1]: mean |gradient| over the noisy copies, largest over channels, divided
    by its maximum."""

    name = "smoothgrad"
    title = "SmoothGrad"
    shows = (
        "The gradient averaged over noisy copies of the photo (Smilkov et al. 2017): the same "
        "question as the gradient, with less speckle."
    )
    signal_names = ("split_half_agreement",)
    Params = SmoothGradParams
    signed = False
    units = "mean |d target logit / d input value| over noisy copies, largest over channels"
    cost_hint = "lower samples"
    needs_twin = True
    anytime = True

    @classmethod
    def signed_for(cls, question: Question) -> bool:
        return question.contrast is not None

    @classmethod
    def units_for(cls, question: Question) -> str:
        return "mean " + CONTRAST_UNITS if question.contrast is not None else cls.units

    @classmethod
    def planned_passes(cls, params: SmoothGradParams, side: tuple[int, int]) -> int:
        return sampled_passes(params.samples, params.batch_size)

    def _attribute(
        self, x: np.ndarray, objective: Objective, params: SmoothGradParams, logits: np.ndarray
    ) -> np.ndarray:
        stdev = params.noise * float(x.max() - x.min())
        contrast = objective.kind == "contrast"  # signed: the mean gradient times the input

        def reduce(gradients: torch.Tensor) -> np.ndarray:
            return times_input(gradients, x) if contrast else channel_max_abs(gradients)

        # captum draws the noise from torch's global generator: seed it, and restore it after,
        # both while this request holds the twin (``input_gradients``), so that no other
        # SmoothGrad draws from a generator this one seeded or restored.
        with (
            input_gradients(
                self.model.twin, self.model.cancellation, score_head(objective)
            ) as logits_fn,
            torch.random.fork_rng(devices=[]),
        ):
            torch.manual_seed(params.seed)
            saliency = _Halves(logits_fn, self, params.samples, reduce, params.stop == "converged")
            try:
                gradients = NoiseTunnel(saliency).attribute(
                    as_batch(x),
                    target=0,
                    nt_type="smoothgrad",
                    nt_samples=params.samples,
                    nt_samples_batch_size=params.batch_size,
                    stdevs=stdev,
                    abs=not contrast,
                )
            except _Converged as stopped:
                self.sampling = Sampling(stopped.used, params.samples, params.stop)
                self.signals["split_half_agreement"] = stopped.agreement
                return reduce(saliency.mean())
        self.sampling = Sampling(params.samples, params.samples, params.stop)
        if params.samples > 1:
            self.signals["split_half_agreement"] = split_half_agreement(*saliency.halves())
        return reduce(gradients)


class _Converged(Exception):
    """Raised out of NoiseTunnel's loop once the split-half test holds (``stop=converged``):
    captum has no way to end its batches early."""

    def __init__(self, used: int, agreement: float) -> None:
        super().__init__(f"converged after {used} noisy copies")
        self.used, self.agreement = used, agreement


class _Halves(Saliency):
    """Saliency that also keeps the sum of the gradients of each half of the noisy copies (the
    two halves' maps agree where the map is more than noise: ``Heatmap.signals``) and, when
    the work is watched, reports the mean so far (``Explainer.report_partial``) after each of
    NoiseTunnel's batches. The gradients, and so the final map, are Saliency's own."""

    def __init__(
        self,
        forward: Any,
        explainer: Explainer,
        samples: int,
        reduce: Callable[[torch.Tensor], np.ndarray],
        stop_early: bool = False,
    ) -> None:
        super().__init__(forward)
        self.explainer = explainer
        self.reduce = reduce
        self.samples = samples
        self.half = samples // 2
        self.sums: list[torch.Tensor | None] = [None, None]
        self.counts = [0, 0]
        # sums over the even and the odd copies: the halves of the stopping test
        self.stop_early = stop_early
        self.parity_sums: list[torch.Tensor] = []
        self.parity_counts = [0, 0]

    def attribute(self, inputs: Any, **kwargs: Any) -> Any:
        gradients = Saliency.attribute.__wrapped__(self, inputs, **kwargs)
        done = sum(self.counts)
        if self.stop_early:
            self._check(gradients.detach(), done)
        split = min(len(gradients), max(0, self.half - done))
        for side, part in enumerate((gradients[:split], gradients[split:])):
            if len(part):
                total = part.detach().sum(dim=0, keepdim=True)
                known = self.sums[side]
                self.sums[side] = total if known is None else known + total
                self.counts[side] += len(part)
        if self.explainer.watched:
            total = torch.stack([s for s in self.sums if s is not None]).sum(dim=0)
            self.explainer.report_partial(self.reduce(total / sum(self.counts)))
        return gradients

    def _check(self, gradients: torch.Tensor, done: int) -> None:
        """Add a batch's copies to the even and odd sums; raise ``_Converged`` once their mean
        maps pass the split-half test and copies remain."""
        if not self.parity_sums:
            self.parity_sums = [torch.zeros_like(gradients[:1]) for _ in range(2)]
        for side, part in enumerate(parity_halves(done, done + len(gradients))):
            self.parity_sums[side] += gradients[part].sum(dim=0, keepdim=True)
            self.parity_counts[side] += len(gradients[part])
        used = done + len(gradients)
        if used >= self.samples or min(self.parity_counts) == 0:
            return
        reached, agreement = CONVERGENCE.reached(
            used,
            *(
                self.reduce(s / n)
                for s, n in zip(self.parity_sums, self.parity_counts, strict=True)
            ),
        )
        if reached:
            raise _Converged(used, agreement)

    def mean(self) -> torch.Tensor:
        """The mean gradient over the copies so far (the map where sampling stopped)."""
        return sum(self.parity_sums) / sum(self.parity_counts)  # type: ignore[return-value]

    # NoiseTunnel calls its method's undecorated ``attribute`` (captum's ``__wrapped__``)
    attribute.__wrapped__ = attribute  # type: ignore[attr-defined]

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean map of each half of the noisy copies."""
        first, second = self.sums
        assert first is not None and second is not None
        return self.reduce(first / self.counts[0]), self.reduce(second / self.counts[1])
