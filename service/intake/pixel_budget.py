"""A budget of decoded pixels shared by all requests of one app.

Decoding is the one step whose cost a small upload can blow up: a 132 KB PNG of one colour
decodes to 6000x6000 pixels, ~140 MB, and every later step (face search, rendering a PNG the
size of the upload) works on that image. So a request asks the budget for its image's
``width x height`` -- read from the header, before any pixel is decoded -- and holds it until
its response is ready; the budget lets at most ``capacity`` pixels be held at once and makes
the others wait (asynchronously: the event loop and ``/predict`` keep running).

``capacity`` is ``max_decodes x max_image_pixels``: ``max_decodes`` images of the largest
accepted size at once (default one per core, since decoding is CPU-bound), or many more smaller
ones. Whoever fits goes first: a small photo is never queued behind a waiting 40-megapixel one,
and a large one goes as soon as enough pixels are free (small images hold too little to starve
it). Used from the event loop only, so plain fields are enough; ``in_use``, ``peak`` and
``waiting`` are also Prometheus gauges when a registry is given.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Gauge

from service.settings import Settings

METRIC_PREFIX = "celebxai_decode"


class PixelBudget:
    """At most ``capacity`` decoded pixels held at once; ``hold(pixels)`` waits for room."""

    def __init__(self, capacity: int, registry: CollectorRegistry | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 pixel, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        if registry is not None:
            self._register(registry)

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: CollectorRegistry | None = None
    ) -> PixelBudget:
        """``max_decodes`` (0: one per core) images of ``max_image_pixels`` each."""
        decodes = settings.max_decodes or os.cpu_count() or 1
        return cls(decodes * settings.max_image_pixels, registry)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` (``1..capacity``) for the body of the ``async with``."""
        await self.acquire(pixels)
        try:
            yield
        finally:
            self.release(pixels)

    async def acquire(self, pixels: int) -> None:
        if not 1 <= pixels <= self.capacity:
            raise ValueError(f"cannot hold {pixels} pixels of a budget of {self.capacity}")
        if self.in_use + pixels <= self.capacity:
            self._take(pixels)
            return
        waiter = (pixels, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter[1]
        except BaseException:  # cancelled (client gone): give back, or leave the queue
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            else:  # granted in the same turn as the cancellation
                self.release(pixels)
            raise

    def release(self, pixels: int) -> None:
        self.in_use -= pixels
        for waiter in list(self._waiters):
            needed, future = waiter
            if future.done():  # cancelled; its task leaves the queue when it next runs
                continue
            if self.in_use + needed <= self.capacity:
                self._waiters.remove(waiter)
                self._take(needed)
                future.set_result(None)

    def _take(self, pixels: int) -> None:
        self.in_use += pixels
        self.peak = max(self.peak, self.in_use)

    def _register(self, registry: CollectorRegistry) -> None:
        gauges = {
            "pixels_in_use": ("decoded pixels held by requests now", lambda: self.in_use),
            "pixels_peak": ("most decoded pixels held at once since start", lambda: self.peak),
            "pixels_capacity": ("max_decodes x max_image_pixels", lambda: self.capacity),
            "waiting": ("requests waiting for room in the pixel budget", lambda: self.waiting),
        }
        for name, (help_text, read) in gauges.items():
            Gauge(f"{METRIC_PREFIX}_{name}", help_text, registry=registry).set_function(read)
