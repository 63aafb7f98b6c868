"""Work held still by the test, so that what a test sees of running work does not depend on how
fast the CPU would have finished it.

``HeldPasses(n)`` wraps ``Cancellation.batch`` (what every forward pass of an explanation, a
synthesis or a job calls right before it runs): each piece of work (one ``Cancellation``) waits
before its n-th pass until it is cancelled, or until the test ends (``ended``). The root
conftest's ``hold_passes`` fixture installs one for the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from service.common.cancellation import Cancellation

HOLD_TIMEOUT_S = 120.0


class HeldPasses:
    """Holds each piece of work right before its forward pass number ``before_pass`` until it
    is cancelled (or ``ended`` is set); ``reached`` counts the pieces held."""

    def __init__(self, before_pass: int) -> None:
        self.before_pass = before_pass
        self.reached = threading.Semaphore(0)
        self.ended = threading.Event()
        self.lock = threading.Lock()
        self.passes: dict[int, tuple[Cancellation, int]] = {}  # keeps each token alive: ids stay

    def wrap(self, batch: Callable[[Cancellation], None]) -> Callable[[Cancellation], None]:
        def held_batch(cancellation: Cancellation) -> None:
            with self.lock:
                count = self.passes.get(id(cancellation), (cancellation, 0))[1] + 1
                self.passes[id(cancellation)] = (cancellation, count)
            if count == self.before_pass:
                self.reached.release()
                deadline = time.monotonic() + HOLD_TIMEOUT_S
                while not (cancellation.cancelled or self.ended.is_set()):
                    assert time.monotonic() < deadline, "held work was never cancelled"
                    time.sleep(0.01)
            batch(cancellation)

        return held_batch

    def wait_until_reached(self) -> None:
        assert self.reached.acquire(timeout=HOLD_TIMEOUT_S), "no work reached the held pass"
