"""Stopping abandoned work: one token per unit of work, checked between its batches.

A ``Cancellation`` is made for each piece of expensive work (an explanation or synthesis
request now; a job later) and handed to everything that runs it in batches: the explainers'
batch loops, ``Engine.infer`` between chunks, the twin's forward passes in the gradient methods
(SmoothGrad samples, integrated-gradients steps), the steps of activation maximisation.
Whoever learns that the result is no longer wanted (the client hung up; a job was deleted)
calls ``cancel``; the work then raises ``Cancelled`` at its next batch, on whichever thread it
runs, so at most the batch in flight finishes. Waits (for an explanation turn, for a place in
the dynamic batcher) end at once through ``guard``.

``batch()`` is what a forward pass calls right before it runs: it stops cancelled work and tells
``on_batch`` that one more pass runs (the service counts explanation batches with it; a job can
report progress the same way).

``holding_shared()`` marks a stretch in which the calling thread holds something every other
piece of work may wait for (the twin, ``service.common.twin``). Work that could pause in its
``batch()`` (a job giving its explanation turn away, ``service.common.admission``) must not
pause there: it would keep what it holds while paused, and whoever took its turn might wait for
exactly that. ``holds_shared()`` says whether the thread is in such a stretch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
_held = threading.local()


@contextmanager
def holding_shared() -> Iterator[None]:
    """The calling thread holds a resource others wait for, for the block (nests)."""
    _held.depth = getattr(_held, "depth", 0) + 1
    try:
        yield
    finally:
        _held.depth -= 1


def holds_shared() -> bool:
    """Whether the calling thread is inside ``holding_shared()``: work must not pause here."""
    return getattr(_held, "depth", 0) > 0


class Cancelled(Exception):
    """The work was cancelled before it finished; the message says why."""


class Cancellation:
    """A thread-safe, one-way flag with a reason. Cheap to check; ``cancel`` may come from any
    thread or the event loop, and the first reason wins."""

    def __init__(self, on_batch: Callable[[], None] | None = None) -> None:
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._wakers: list[Callable[[], None]] = []
        self._passes = 0

    @property
    def cancelled(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def passes(self) -> int:
        """Forward passes reported through ``batch()`` so far."""
        return self._passes

    def cancel(self, reason: str) -> None:
        """Ask the work to stop at its next batch (idempotent)."""
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            wakers, self._wakers = self._wakers, []
        for wake in wakers:
            wake()

    def check(self) -> None:
        """Raise ``Cancelled`` if the work was cancelled; call it between batches."""
        if self._reason is not None:
            raise Cancelled(self._reason)

    def batch(self) -> None:
        """Call right before one forward pass: raises ``Cancelled`` instead of running it when
        the work was cancelled, else counts the pass (``passes``) and reports it to
        ``on_batch``."""
        self.check()
        with self._lock:
            self._passes += 1
        if self._on_batch is not None:
            self._on_batch()

    async def guard(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, or ``Cancelled`` as soon as this is cancelled; then the
        awaitable is cancelled too, so a queued wait (a semaphore, a batcher submission) gives
        up its place (already cancelled: it never starts). A result that arrived first is
        returned even if cancelled since."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not woken.done():
                woken.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(settle)

        task = asyncio.ensure_future(awaitable)
        with self._lock:
            if self._reason is None:
                self._wakers.append(wake)
        try:
            if not self.cancelled:
                pending: set[asyncio.Future[Any]] = {task, woken}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            with self._lock:
                if wake in self._wakers:
                    self._wakers.remove(wake)
            woken.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled() and self._reason is not None:
            raise Cancelled(self._reason)
        return task.result()  # its exception, or CancelledError if someone else cancelled it
