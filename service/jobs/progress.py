"""How far a job has got: forward passes run against the passes its work plans.

Every forward pass of an explanation or a synthesis goes through its ``Cancellation``'s
``batch()`` (the ONNX engine per chunk, the twin per pass), so counting those calls measures the
work done without the methods knowing about jobs. The plan comes from the work itself
(``Explainer.planned_passes``, ``MaximizeParams.planned_passes``). Progress stays below 1 until
the job is done, since a plan can be short by a pass.
"""

from __future__ import annotations

ALMOST_DONE = 0.99


class PassCounter:
    """Counts passes against a plan; ``fraction`` is the progress to report (< 1)."""

    def __init__(self, planned: int) -> None:
        self.planned = max(1, planned)
        self.done = 0

    def count(self) -> float:
        self.done += 1
        return self.fraction

    @property
    def fraction(self) -> float:
        return min(ALMOST_DONE, self.done / self.planned)
