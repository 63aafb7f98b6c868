"""The job store's bounds: limits per key and in all, expiry after the TTL, owners."""

from __future__ import annotations

import asyncio

import pytest

from service.cancellation import Cancellation
from service.errors import TooManyJobs, UnknownJob
from service.jobs.progress import PassCounter, planned_passes
from service.jobs.store import ANONYMOUS, JobStore, owner_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coroutine_function):  # the store lives on an event loop
    return asyncio.run(coroutine_function())


def test_finished_jobs_expire_after_the_ttl_and_unfinished_ones_never() -> None:
    clock = Clock()

    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=10, max_jobs_per_key=10, clock=clock)
        done = store.create("a", "lime", {}, Cancellation())
        running = store.create("a", "lime", {}, Cancellation())
        store.update(done, state="running")
        store.update(running, state="running")
        clock.now += 5
        store.update(done, state="done", progress=1.0)
        clock.now += 59.9
        assert store.get(done.id, "a") is done
        assert store.counts()["done"] == 1
        clock.now += 0.2
        assert store.counts()["done"] == 0
        with pytest.raises(UnknownJob):
            store.get(done.id, "a")
        clock.now += 3600
        assert store.get(running.id, "a").state == "running"

    run(scenario)


def test_limits_count_unfinished_jobs_per_owner_and_in_all() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=3, max_jobs_per_key=2)
        first = store.create("a", "lime", {}, Cancellation())
        store.create("a", "lime", {}, Cancellation())
        with pytest.raises(TooManyJobs, match="this API key already has 2"):
            store.create("a", "lime", {}, Cancellation())
        store.create("b", "lime", {}, Cancellation())
        with pytest.raises(TooManyJobs, match="3 jobs are queued or running"):
            store.create("c", "lime", {}, Cancellation())
        store.update(first, state="cancelled")  # finished: no longer counts
        assert store.create("a", "lime", {}, Cancellation()).state == "queued"

    run(scenario)


def test_another_owner_cannot_see_a_job_and_a_finished_record_is_final() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=3, max_jobs_per_key=3)
        job = store.create(owner_of("key-a"), "gradient", {}, Cancellation())
        with pytest.raises(UnknownJob):
            store.get(job.id, owner_of("key-b"))
        store.update(job, state="failed", error={"code": "x", "message": "y"})
        store.update(job, state="done", progress=1.0)
        assert job.state == "failed" and job.progress == 0.0
        store.forget(job)
        with pytest.raises(UnknownJob):
            store.get(job.id, owner_of("key-a"))

    run(scenario)


def test_owners_are_digests_of_the_key() -> None:
    assert owner_of(None) == owner_of("") == ANONYMOUS
    assert owner_of("key-a") != owner_of("key-b")
    assert "key-a" not in owner_of("key-a") and len(owner_of("key-a")) == 64


def test_planned_passes_follow_the_parameters() -> None:
    assert planned_passes("lime", {"num_samples": 256}, (150, 150)) == 1 + 8
    assert planned_passes("rise", {"num_masks": 100}, (150, 150)) == 1 + 4
    # occlusion 24/12 on 150 px: 12 x 12 windows, 32 a batch
    assert planned_passes("occlusion", {"window": 24, "stride": 12}, (150, 150)) == 1 + 5
    assert planned_passes("maximize", {"steps": 30}, (0, 0)) == 32
    counter = PassCounter(2)
    assert [counter.count() for _ in range(3)] == [0.5, 0.99, 0.99]
