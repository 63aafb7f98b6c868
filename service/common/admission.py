"""Admission control: how many image requests and explanations may be in progress at once.

Both are used from the event loop only. ``InFlightLimiter`` bounds every image request (a full
house is 503 ``overloaded`` at once); ``ExplanationGate`` bounds the expensive ones, which a
synchronous request and a job share (``service.api.deps.explanation_slot``,
``service.jobs.runner``).
"""

from __future__ import annotations

import asyncio


class InFlightLimiter:
    """Counts image requests in progress; ``try_acquire`` says no beyond ``limit``.

    Used from the event loop only, so a plain counter is enough.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_acquire(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


class ExplanationGate:
    """Bounds explanation work: ``running`` at most ``concurrent`` at once, and at most ``queue``
    more admitted to wait for a turn; ``admitted`` says no beyond that. Explanations cost 10 to
    100 times a prediction, so without this a burst of them would starve ``/predict``."""

    def __init__(self, concurrent: int, queue: int) -> None:
        self.concurrent, self.queue = concurrent, queue
        self.admitted = InFlightLimiter(concurrent + queue)
        self.running = asyncio.Semaphore(concurrent)
