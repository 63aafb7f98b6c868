"""The cancellation token: checks, the batch hook, and ``guard`` around waits."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.common.cancellation import Cancellation, Cancelled


def test_check_raises_once_cancelled_with_the_first_reason():
    cancellation = Cancellation()
    cancellation.check()

    cancellation.cancel("client hung up")
    cancellation.cancel("job deleted")

    assert cancellation.cancelled and cancellation.reason == "client hung up"
    with pytest.raises(Cancelled, match="client hung up"):
        cancellation.check()


def test_batch_reports_passes_until_cancelled():
    passes: list[None] = []
    cancellation = Cancellation(on_batch=lambda: passes.append(None))

    cancellation.batch()
    cancellation.batch()
    cancellation.cancel("client hung up")
    with pytest.raises(Cancelled):
        cancellation.batch()

    assert len(passes) == 2


def test_guard_returns_the_result_of_work_that_finishes_first():
    async def scenario() -> int:
        return await Cancellation().guard(asyncio.sleep(0.01, result=7))

    assert asyncio.run(scenario()) == 7


def test_guard_ends_a_wait_when_cancelled_from_another_thread():
    async def scenario() -> tuple[bool, int]:
        semaphore = asyncio.Semaphore(0)  # never free: the wait would last forever
        cancellation = Cancellation()
        timer = threading.Timer(0.05, cancellation.cancel, args=("client hung up",))
        timer.start()
        with pytest.raises(Cancelled, match="client hung up"):
            await cancellation.guard(semaphore.acquire())
        semaphore.release()  # the abandoned wait did not take it
        return semaphore.locked(), len(semaphore._waiters or ())

    locked, waiters = asyncio.run(scenario())

    assert not locked and waiters == 0


def test_guard_refuses_to_start_once_cancelled():
    async def scenario() -> None:
        cancellation = Cancellation()
        cancellation.cancel("client hung up")
        awaitable = asyncio.sleep(0)
        try:
            await cancellation.guard(awaitable)
        finally:
            awaitable.close()

    with pytest.raises(Cancelled):
        asyncio.run(scenario())


def test_guard_passes_on_the_work_own_errors():
    async def failing() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(Cancellation().guard(failing()))
