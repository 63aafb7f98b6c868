"""Admission control: how many image requests and explanations may be in progress at once, and
who goes first.

``InFlightLimiter`` bounds every image request (a full house is 503 ``overloaded`` at once);
``ExplanationGate`` bounds the expensive ones, which a synchronous request and a job share
(``service.api.deps.explanation_slot``, ``service.jobs.runner``).

The sharing policy is **synchronous first**: somebody is waiting on a synchronous explanation,
nobody is waiting on a job. So

- a synchronous explanation waiting for a turn gets the next free turn before any queued job
  (``Priority.INTERACTIVE`` before ``Priority.BACKGROUND``; first come, first served within
  each);
- a running job gives its turn away at its next batch whenever a synchronous explanation
  waits (``BackgroundWork.batch``, on the job's work thread), and takes it back, ahead of the
  jobs still queued, when a turn is free; so an interactive call waits at most one job batch.
  Except inside the twin (``holds_shared``): a job never pauses while it holds the twin, which
  the synchronous gradient methods wait for, so a gradient job's twin stretch (SmoothGrad's
  samples, integrated gradients' steps: at most ``max_passes_per_request`` passes) runs to its
  end before it can give way;
- on the engine's inference thread, a job's forward passes run after every interactive one
  already queued there (``/predict`` batches, synchronous explanations' chunks: see
  ``service.inference.engine.InferenceThread``), so ``/predict`` waits at most the one job
  batch already running.

Everything here is used from the event loop, except ``BackgroundWork.batch``, which runs on the
job's work thread and hands the give-way to the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from enum import IntEnum

from service.common.cancellation import Cancellation, holds_shared


class Priority(IntEnum):
    """Who goes first for an explanation turn and on the inference thread (lower first)."""

    INTERACTIVE = 0
    """a client waits for the answer: /predict, synchronous explanations"""
    BACKGROUND = 1
    """nobody waits on the connection: jobs"""


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
    """Bounds explanation work: at most ``concurrent`` turns taken at once, handed out
    interactive first (``take``); and at most ``queue`` synchronous requests admitted to wait
    for one (``admitted`` says no beyond that: jobs are bounded by the job limits instead).
    Explanations cost 10 to 100 times a prediction, so without this a burst of them would
    starve ``/predict``."""

    def __init__(self, concurrent: int, queue: int) -> None:
        self.concurrent, self.queue = concurrent, queue
        self.admitted = InFlightLimiter(concurrent + queue)
        self.taken = 0
        self._waiting: dict[Priority, deque[asyncio.Future[None]]] = {
            priority: deque() for priority in Priority
        }

    @property
    def interactive_waiting(self) -> int:
        """Synchronous explanations waiting for a turn (a running job gives way when > 0)."""
        return self._still_waiting(Priority.INTERACTIVE)

    @property
    def background_waiting(self) -> int:
        """Jobs waiting for a turn (queued, or given way)."""
        return self._still_waiting(Priority.BACKGROUND)

    def _still_waiting(self, priority: Priority) -> int:
        """The line's waiters less those cancelled since they queued (each leaves the line
        only when its task next runs): a job gives its turn away to no one who has left."""
        # a job's work thread asks too: copy the line first (one C call under the GIL), since
        # iterating it while the event loop changes it raises RuntimeError
        return sum(not turn.done() for turn in tuple(self._waiting[priority]))

    async def take(self, priority: Priority, *, first: bool = False) -> None:
        """Wait for a turn: at once if one is free and nobody of this priority or a higher one
        waits, else in line (``first``: at the head of its priority's line, for a job taking
        back the turn it gave away). Cancelled while waiting: leaves the line, and a turn
        handed to it in the meantime passes on."""
        ahead = [self._waiting[p] for p in Priority if p <= priority]
        if self.taken < self.concurrent and not any(ahead):
            self.taken += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = self._waiting[priority]
        if first:
            line.appendleft(turn)
        else:
            line.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed over as we left: pass it on
            elif turn in line:  # a release in between may have dropped it already
                line.remove(turn)
            raise

    def release(self) -> None:
        """Give a turn back: it goes to the first interactive waiter, else the first job. A
        waiter cancelled since it queued (its task has yet to run and leave the line) is
        dropped from the line and passed over."""
        self.taken -= 1
        for priority in Priority:
            line = self._waiting[priority]
            while line and self.taken < self.concurrent:
                turn = line.popleft()
                if not turn.done():
                    self.taken += 1
                    turn.set_result(None)
            if self.taken >= self.concurrent:
                return


class BackgroundWork(Cancellation):
    """The ``Cancellation`` of a job's work, which also holds the job's explanation turn.

    ``take_turn``/``release_turn`` (event loop) wait for and give back the turn at
    ``Priority.BACKGROUND``. ``batch`` (called on the work's thread right before each forward
    pass) first gives the turn away while a synchronous explanation waits for one, blocking the
    work until the gate hands a turn back; then it does what every ``batch`` does. The engine
    runs this work's passes at ``Priority.BACKGROUND`` (``priority_of``).
    """

    def __init__(self, gate: ExplanationGate, on_batch: Callable[[], None] | None = None) -> None:
        super().__init__(on_batch)
        self.gate = gate
        self.holding = False
        self.gave_way = 0  # times the turn was given away (the bench and tests read it)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def take_turn(self, *, first: bool = False) -> None:
        """Wait (on the event loop) for a turn; ``Cancelled`` once this is cancelled."""
        self._loop = asyncio.get_running_loop()
        await self.guard(self.gate.take(Priority.BACKGROUND, first=first))
        self.holding = True

    def release_turn(self) -> None:
        """Give the turn back if this work holds one (idempotent; event loop)."""
        if self.holding:
            self.holding = False
            self.gate.release()

    def batch(self) -> None:
        if self._should_give_way():
            assert self._loop is not None
            asyncio.run_coroutine_threadsafe(self._give_way(), self._loop).result()
        super().batch()

    def _should_give_way(self) -> bool:
        if not (self.holding and self.gate.interactive_waiting and self._loop is not None):
            return False
        if holds_shared():
            return False  # paused here, it would keep the twin the others may wait for
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return True  # a work thread: it may block while the loop serves the others
        return False  # on the event loop itself blocking would wait for itself

    async def _give_way(self) -> None:
        if not (self.holding and self.gate.interactive_waiting):
            return  # it was served by another turn meanwhile
        self.release_turn()
        self.gave_way += 1
        await self.take_turn(first=True)


def priority_of(cancellation: Cancellation | None) -> Priority:
    """The priority of the work that ``cancellation`` stops: a job's is background."""
    return Priority.BACKGROUND if isinstance(cancellation, BackgroundWork) else Priority.INTERACTIVE
