"""Job event streams: one serialisation per event for any number of readers, the newest state
for a slow reader, a final event however the job leaves (its end, forgotten, expired), and the
caps on open streams. The store is the real one; the test sets the pace of every change."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from service.errors import TooManyStreams
from service.jobs import events
from service.jobs.events import EventStreams, Subscription
from service.jobs.store import JobResult, JobStore

INTERVAL = 0.0  # every change is an event: the test decides when changes happen


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def parse(chunk: bytes) -> dict[str, Any]:
    data = [line for line in chunk.decode().splitlines() if line.startswith("data:")]
    return json.loads(data[0].removeprefix("data:"))


async def next_event(stream: AsyncIterator[bytes]) -> dict[str, Any]:
    return parse(await asyncio.wait_for(anext(stream), 5))


async def drain(stream: AsyncIterator[bytes]) -> list[dict[str, Any]]:
    """Every event left, until the stream ends (within 5 s)."""

    async def collect() -> list[dict[str, Any]]:
        return [parse(chunk) async for chunk in stream if chunk.startswith(b"id:")]

    return await asyncio.wait_for(collect(), 5)


def streams_of(store: JobStore, per_job: int = 8, per_key: int = 8) -> EventStreams:
    return EventStreams(store, interval=INTERVAL, per_job=per_job, per_key=per_key)


async def settle() -> None:
    """Let the broadcast task take in the store's last change."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_many_readers_share_one_serialisation_of_each_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[bytes] = []
    original = events.event_bytes

    def counted(job: Any) -> bytes:
        made.append(original(job))
        return made[-1]

    monkeypatch.setattr(events, "event_bytes", counted)

    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=4, max_jobs_per_key=4)
        streams = streams_of(store, per_job=50, per_key=50)
        job = await store.create("a", "lime", {})
        subscriptions = [streams.subscribe(job, "a") for _ in range(50)]
        readers = [s.events() for s in subscriptions]
        assert len({(await next_event(r))["state"] for r in readers}) == 1
        for progress in (0.25, 0.5):
            await store.update(job.id, {"state": "running", "progress": progress})
            await settle()
            seen = [await anext(r) for r in readers]
            assert all(chunk is seen[0] for chunk in seen)  # one object, made once
            assert parse(seen[0])["progress"] == progress
        await store.update(job.id, {"state": "done", "result": JobResult(b"{}")})
        finals = [await drain(r) for r in readers]
        assert all(f == [{"state": "done", **f[0]}] for f in finals)
        assert len(made) == 4  # queued, two changes, done: once each for 50 readers
        for subscription in subscriptions:
            subscription.close()
        assert streams.open == 0

    run(scenario)


def test_a_slow_reader_gets_the_newest_state_not_every_one() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=4, max_jobs_per_key=4)
        streams = streams_of(store)
        job = await store.create("a", "lime", {})
        reader = streams.subscribe(job, "a").events()
        assert (await next_event(reader))["state"] == "queued"
        for step in range(1, 10):  # the reader reads nothing meanwhile
            await store.update(job.id, {"state": "running", "progress": step / 10})
            await settle()
        assert (await next_event(reader))["progress"] == 0.9
        await store.update(job.id, {"state": "failed", "error": {"code": "x", "message": "y"}})
        assert [e["state"] for e in await drain(reader)] == ["failed"]

    run(scenario)


def test_a_job_forgotten_while_watched_ends_its_streams_with_gone() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=4, max_jobs_per_key=4, max_results=1)
        streams = EventStreams(store, interval=2.0, per_job=8, per_key=8)
        job = await store.create("a", "lime", {})
        reader = streams.subscribe(job, "a").events()
        await next_event(reader)
        # a change right after the first event waits out the interval; meanwhile the job is
        # cancelled and forgotten (a second DELETE), so the broadcast never sees it finish
        await store.update(job.id, {"state": "running", "progress": 0.1})
        await settle()
        await store.delete(job.id, "a")
        await store.update(job.id, {"state": "cancelled"})
        await store.delete(job.id, "a")
        ending = await drain(reader)
        assert ending[-1]["state"] == events.GONE
        assert ending[-1]["error"]["code"] == "unknown_job"

    run(scenario)


def test_a_reader_behind_an_expired_job_still_ends_with_its_last_state() -> None:
    now = [1000.0]

    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=4, max_jobs_per_key=4, clock=lambda: now[0])
        streams = streams_of(store)
        job = await store.create("a", "lime", {})
        reader = streams.subscribe(job, "a").events()
        await next_event(reader)
        await store.update(job.id, {"state": "running", "progress": 0.5})
        await store.update(job.id, {"state": "done", "result": JobResult(b"{}")})
        await settle()
        now[0] += 61  # expired while the reader was away
        assert store.counts()["done"] == 0
        assert [e["state"] for e in await drain(reader)] == ["done"]

    run(scenario)


def test_streams_are_capped_per_job_and_per_key_and_free_again_when_closed() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=4, max_jobs_per_key=4)
        streams = streams_of(store, per_job=2, per_key=3)
        first = await store.create("a", "lime", {})
        second = await store.create("a", "lime", {})
        held: list[Subscription] = [streams.subscribe(first, "a") for _ in range(2)]
        with pytest.raises(TooManyStreams, match="2 event streams are open on job"):
            streams.subscribe(first, "a")
        held.append(streams.subscribe(second, "a"))
        with pytest.raises(TooManyStreams, match="this API key already has 3"):
            streams.subscribe(second, "a")
        assert streams.subscribe(second, "b").broadcast is held[2].broadcast  # another key
        held[0].close()
        held[0].close()  # closing twice gives back one place
        assert streams.open == 3
        held.append(streams.subscribe(first, "a"))
        with pytest.raises(TooManyStreams):
            streams.subscribe(first, "a")

    run(scenario)


def test_the_broadcast_stops_when_its_last_reader_leaves() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=4, max_jobs_per_key=4)
        streams = streams_of(store)
        job = await store.create("a", "lime", {})
        subscription = streams.subscribe(job, "a")
        broadcast = subscription.broadcast
        subscription.close()
        await settle()
        assert broadcast._task is not None and broadcast._task.done()
        again = streams.subscribe(job, "a")  # a new reader: a new broadcast
        assert again.broadcast is not broadcast
        events = again.events()
        assert (await next_event(events))["state"] == "queued"
        await store.update(job.id, {"state": "cancelled"})
        assert [e["state"] for e in await drain(events)] == ["cancelled"]

    run(scenario)
