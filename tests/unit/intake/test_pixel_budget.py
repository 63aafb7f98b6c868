"""The budget of decoded pixels: holds at most its capacity, lets whoever fits go first, and
gives back what a cancelled request held or waited for."""

from __future__ import annotations

import asyncio
import os

import pytest
from prometheus_client import CollectorRegistry

from service.intake.pixel_budget import PixelBudget
from service.settings import Settings
from service.state import ServiceState

MEGA = 1_000_000


async def _holder(budget: PixelBudget, pixels: int, log: list[str], name: str, done: asyncio.Event):
    async with budget.hold(pixels):
        log.append(name)
        await done.wait()


def test_capacity_is_max_decodes_images_of_the_pixel_limit():
    settings = Settings(_env_file=None, max_decodes=3, max_image_pixels=10 * MEGA)
    assert PixelBudget.from_settings(settings).capacity == 30 * MEGA
    default = Settings(_env_file=None)
    assert default.max_decodes == 0
    assert PixelBudget.from_settings(default).capacity == (os.cpu_count() or 1) * 40 * MEGA
    assert ServiceState(settings).decodes.capacity == 30 * MEGA


def test_large_images_wait_while_small_ones_go_on():
    budget = PixelBudget(80 * MEGA)
    log: list[str] = []

    async def scenario() -> None:
        release = {name: asyncio.Event() for name in ("big1", "big2", "big3", "small")}
        tasks = {
            name: asyncio.create_task(_holder(budget, pixels, log, name, release[name]))
            for name, pixels in (("big1", 36 * MEGA), ("big2", 36 * MEGA), ("big3", 36 * MEGA))
        }
        await asyncio.sleep(0.01)
        assert log == ["big1", "big2"] and budget.in_use == 72 * MEGA and budget.waiting == 1
        # A small photo fits beside them: it is not queued behind the waiting large one.
        small = _holder(budget, 250 * 250, log, "small", release["small"])
        tasks["small"] = asyncio.create_task(small)
        await asyncio.sleep(0.01)
        assert log == ["big1", "big2", "small"] and budget.waiting == 1
        release["big1"].set()
        await asyncio.sleep(0.01)
        assert log == ["big1", "big2", "small", "big3"]
        assert budget.in_use == 72 * MEGA + 250 * 250
        for event in release.values():
            event.set()
        await asyncio.gather(*tasks.values())

    asyncio.run(scenario())
    assert budget.in_use == 0 and budget.waiting == 0
    assert budget.peak == 72 * MEGA + 250 * 250 <= budget.capacity


def test_a_cancelled_waiter_leaves_the_queue_and_a_failed_holder_gives_back():
    budget = PixelBudget(10)

    async def scenario() -> None:
        first = asyncio.Event()
        holder = asyncio.create_task(_holder(budget, 8, [], "holder", first))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(budget.acquire(5))
        await asyncio.sleep(0.01)
        assert budget.waiting == 1
        waiter.cancel()  # the client hung up while waiting
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.waiting == 0 and budget.in_use == 8
        first.set()
        await holder
        with pytest.raises(RuntimeError):
            async with budget.hold(10):
                raise RuntimeError("decoding failed")

    asyncio.run(scenario())
    assert budget.in_use == 0 and budget.waiting == 0 and budget.peak == 10


def test_a_waiter_granted_and_cancelled_in_the_same_turn_gives_back():
    budget = PixelBudget(10)

    async def scenario() -> None:
        await budget.acquire(10)
        waiter = asyncio.create_task(budget.acquire(4))
        await asyncio.sleep(0)
        budget.release(10)  # grants the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(scenario())
    assert budget.in_use == 0 and budget.waiting == 0


@pytest.mark.parametrize("pixels", [0, 11])
def test_a_request_outside_the_budget_is_a_bug_not_a_wait(pixels: int):
    with pytest.raises(ValueError, match="budget of 10"):
        asyncio.run(PixelBudget(10).acquire(pixels))


def test_gauges_read_the_budget():
    registry = CollectorRegistry()
    budget = PixelBudget(100, registry)

    async def scenario() -> None:
        async with budget.hold(60):
            assert registry.get_sample_value("celebxai_decode_pixels_in_use") == 60

    asyncio.run(scenario())
    assert registry.get_sample_value("celebxai_decode_pixels_in_use") == 0
    assert registry.get_sample_value("celebxai_decode_pixels_peak") == 60
    assert registry.get_sample_value("celebxai_decode_pixels_capacity") == 100
    assert registry.get_sample_value("celebxai_decode_waiting") == 0
