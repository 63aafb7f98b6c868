"""The job store's bounds: limits per key and in all, expiry after the TTL, owners, and what
finished jobs may hold (results in number and bytes, the oldest forgotten first)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from pydantic import BaseModel

from service.errors import JobNotDone, TooManyJobs, UnknownJob
from service.explain import EXPLAINERS
from service.explain.base import MethodCall
from service.insight.maximize import MaximizeParams
from service.jobs.progress import PassCounter
from service.jobs.store import ANONYMOUS, JobResult, JobStore, ResultsHeld, owner_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(scenario: Callable[[], Awaitable[None]]) -> None:  # the store lives on an event loop
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_finished_jobs_expire_after_the_ttl_and_unfinished_ones_with_a_runner_never() -> None:
    clock = Clock()

    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=10, max_jobs_per_key=10, clock=clock)
        done = await store.create("a", "lime", {})
        running = await store.create("a", "lime", {})
        await store.update(done.id, {"state": "running"})
        await store.update(running.id, {"state": "running"})
        clock.now += 5
        view = await store.update(done.id, {"state": "done", "result": JobResult(b'{"x":1}')})
        assert view.elapsed_s == 5 and view.remaining_s == 0 and view.result_json == b'{"x":1}'
        await store.beat(running.id)
        clock.now += 59.9
        await store.beat(running.id)
        assert (await store.get(done.id, "a")).state == "done"
        assert store.counts()["done"] == 1
        clock.now += 0.2
        assert store.counts()["done"] == 0
        with pytest.raises(UnknownJob):
            await store.get(done.id, "a")
        for _ in range(360):  # an hour, its runner beating every 10 s
            clock.now += 10
            await store.beat(running.id)
        assert (await store.get(running.id, "a")).state == "running"

    run(scenario)


def test_limits_count_unfinished_jobs_per_owner_and_in_all() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=3, max_jobs_per_key=2)
        first = await store.create("a", "lime", {})
        await store.create("a", "lime", {})
        with pytest.raises(TooManyJobs, match="this API key already has 2"):
            await store.create("a", "lime", {})
        await store.create("b", "lime", {})
        with pytest.raises(TooManyJobs, match="3 jobs are queued or running"):
            await store.create("c", "lime", {})
        await store.update(first.id, {"state": "cancelled"})  # finished: no longer counts
        again = await store.create("a", "lime", {})
        with pytest.raises(TooManyJobs):
            await store.create("a", "lime", {})
        await store.delete(again.id, "a")  # being cancelled: no longer holds a place either
        assert (await store.create("a", "lime", {})).state == "queued"

    run(scenario)


def test_without_api_keys_the_refusal_says_every_client_shares_the_limit() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=3, max_jobs_per_key=1)
        await store.create(ANONYMOUS, "lime", {})
        with pytest.raises(TooManyJobs, match=r"every client \(no API keys are set\) already"):
            await store.create(ANONYMOUS, "lime", {})

    run(scenario)


def test_delete_asks_an_unfinished_job_to_stop_and_forgets_a_finished_one() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=3, max_jobs_per_key=3)
        job = await store.create(owner_of("key-a"), "gradient", {})
        with pytest.raises(UnknownJob):
            await store.get(job.id, owner_of("key-b"))
        with pytest.raises(UnknownJob):
            await store.delete(job.id, owner_of("key-b"))
        waiter = asyncio.create_task(store.wait(job.id, None, job.version, 10))
        deleted = await store.delete(job.id, owner_of("key-a"))
        assert deleted.cancel_requested and deleted.state == "queued"
        assert (await waiter).cancel_requested  # the runner's watcher learns at once
        with pytest.raises(JobNotDone, match="is queued"):
            await store.render(job.id, owner_of("key-a"), "json")
        await store.update(job.id, {"state": "cancelled", "error": {"code": "c", "message": "m"}})
        await store.update(job.id, {"state": "done", "progress": 1.0})  # final already
        assert (await store.get(job.id, None)).state == "cancelled"
        await store.delete(job.id, owner_of("key-a"))
        with pytest.raises(UnknownJob):
            await store.get(job.id, owner_of("key-a"))

    run(scenario)


def test_renders_of_a_done_job() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=3, max_jobs_per_key=3)
        job = await store.create("a", "maximize", {})
        result = JobResult(b'{"steps":3}', {"png": b"\x89PNG"}, {"X-Test": "1"})
        await store.update(job.id, {"state": "done", "result": result})
        assert await store.render(job.id, "a", "png") == (b"\x89PNG", {"X-Test": "1"})
        assert (await store.render(job.id, "a", "json"))[0] == b'{"steps":3}'
        with pytest.raises(JobNotDone, match="formats: json, png"):
            await store.render(job.id, "a", "overlay")

    run(scenario)


def test_owners_are_digests_of_the_key() -> None:
    assert owner_of(None) == owner_of("") == ANONYMOUS
    assert owner_of("key-a") != owner_of("key-b")
    assert "key-a" not in owner_of("key-a") and len(owner_of("key-a")) == 64


def planned(method: str, params: dict, side: tuple[int, int]) -> int:
    return MethodCall.of(EXPLAINERS[method], params).planned_passes(side)


def test_planned_passes_follow_the_parameters() -> None:
    assert planned("lime", {"num_samples": 256}, (150, 150)) == 1 + 8
    assert planned("rise", {"num_masks": 100}, (150, 150)) == 1 + 4
    assert planned("smoothgrad", {"samples": 16, "batch_size": 5}, (150, 150)) == 1 + 4
    assert planned("integrated_gradients", {"steps": 32}, (150, 150)) == 1 + 2
    assert planned("gradient", {}, (150, 150)) == planned("gradcam", {}, (150, 150)) == 2
    # occlusion 24/12 on 150 px: 12 x 12 windows, 32 a batch; coarse to fine: 7 x 7 coarse
    # windows, then 0.3 of the other 95
    exhaustive = {"window": 24, "stride": 12, "strategy": "exhaustive"}
    assert planned("occlusion", exhaustive, (150, 150)) == 1 + 5
    assert planned("occlusion", {"window": 24, "stride": 12}, (150, 150)) == 1 + 2 + 1
    assert MaximizeParams(steps=30).planned_passes() == 32
    counter = PassCounter(2)
    assert [counter.count() for _ in range(3)] == [0.5, 0.99, 0.99]


def test_a_job_whose_runner_goes_silent_fails_as_lost() -> None:
    clock = Clock()

    async def scenario() -> None:
        store = JobStore(ttl_s=600, max_jobs=3, max_jobs_per_key=3, clock=clock)
        alive = await store.create("a", "lime", {})
        silent = await store.create("a", "lime", {})
        await store.update(silent.id, {"state": "running"})
        for _ in range(12):  # two minutes, the live one's runner beating every 10 s
            clock.now += 10
            await store.beat(alive.id)
        lost = await store.get(silent.id, "a")
        assert lost.state == "failed" and lost.error is not None
        assert lost.error["code"] == "job_lost"
        assert (await store.get(alive.id, "a")).state == "queued"

    run(scenario)


async def finish(store: JobStore, owner: str, result: JobResult | None = None) -> str:
    job = await store.create(owner, "gradcam", {})
    await store.update(job.id, {"state": "running"})
    if result is None:
        await store.update(job.id, {"state": "failed", "error": {"code": "x", "message": "y"}})
    else:
        await store.update(job.id, {"state": "done", "result": result})
    return job.id


def sized(nbytes: int) -> JobResult:
    """A result of ``nbytes`` in all: a small JSON body and a PNG render making up the rest."""
    body = b'{"label":"x"}'
    return JobResult(body, {"overlay": b"\x89PNG" + b"\0" * (nbytes - len(body) - 4)})


def test_finished_jobs_beyond_the_count_forget_the_oldest_first() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=600, max_jobs=4, max_jobs_per_key=4, max_results=3)
        ids = [await finish(store, "a", sized(100)) for _ in range(3)]
        ids.append(await finish(store, "a"))  # a failed job counts too: it is a finished one
        with pytest.raises(UnknownJob, match="forgotten to make room for newer results"):
            await store.get(ids[0], "a")
        for job_id in ids[1:]:
            assert (await store.get(job_id, "a")).is_finished
        assert store.results_held() == ResultsHeld(jobs=3, bytes=200, evicted=1)
        # an unfinished job is never evicted, however many finish after it
        waiting = await store.create("a", "lime", {})
        for _ in range(5):
            await finish(store, "b", sized(10))
        assert (await store.get(waiting.id, "a")).state == "queued"
        assert store.results_held().jobs == 3 and store.results_held().evicted == 6

    run(scenario)


def test_finished_jobs_beyond_the_bytes_forget_the_oldest_until_the_new_one_fits() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=600, max_jobs=4, max_jobs_per_key=4, max_result_bytes=1000)
        small = [await finish(store, "a", sized(300)) for _ in range(3)]  # 900 bytes held
        big = await finish(store, "a", sized(600))  # needs the two oldest gone
        held = store.results_held()
        assert held == ResultsHeld(jobs=2, bytes=900, evicted=2)
        for gone in small[:2]:
            with pytest.raises(UnknownJob):
                await store.render(gone, "a", "json")
        assert (await store.render(big, "a", "overlay"))[0].startswith(b"\x89PNG")
        # a result larger than everything kept fails its job and evicts nothing
        huge = await finish(store, "a", sized(1001))
        failed = await store.get(huge, "a")
        assert failed.state == "failed" and failed.result_json is None
        assert failed.error is not None and failed.error["code"] == "result_too_large"
        assert store.results_held() == ResultsHeld(jobs=3, bytes=900, evicted=2)
        # deleting and expiring give the bytes back
        await store.delete(big, "a")
        assert store.results_held().bytes == 300

    run(scenario)


def test_a_result_is_serialised_once_and_read_as_the_same_bytes() -> None:
    class Body(BaseModel):
        label: str
        values: list[float]

    async def scenario() -> None:
        store = JobStore(ttl_s=600, max_jobs=4, max_jobs_per_key=4)
        result = JobResult.of(Body(label="x", values=[0.25, 1.0]), {"png": b"\x89PNG"})
        assert json.loads(result.body) == {"label": "x", "values": [0.25, 1.0]}
        assert result.size == len(result.body) + 4
        job_id = await finish(store, "a", result)
        first = (await store.get(job_id, "a")).result_json
        assert first is result.body and (await store.get(job_id, "a")).result_json is first
        assert (await store.render(job_id, "a", "json"))[0] is result.body

    run(scenario)


def test_a_wait_cancelled_as_the_job_changes_ends_cancelled() -> None:
    """A reader waiting on the job leaves in the same turn of the loop as a change wakes it
    (the last reader of a job's events hanging up as the job reports progress): the wait ends
    in ``CancelledError``, never with the view, so whoever cancelled it is not kept waiting
    (``asyncio.wait_for`` on Python 3.11 returned the view and dropped the cancellation)."""

    async def scenario() -> None:
        store = JobStore(ttl_s=60, max_jobs=4, max_jobs_per_key=4)
        job = await store.create("a", "lime", {})
        waiting = asyncio.create_task(store.wait(job.id, "a", job.version, timeout=30.0))
        for _ in range(5):
            await asyncio.sleep(0)  # it waits on the store
        assert not waiting.done()
        await store.update(job.id, {"state": "running"})  # wakes it...
        waiting.cancel()  # ...and its reader leaves before it runs again
        done, _ = await asyncio.wait({waiting}, timeout=5.0)
        assert done, "the cancelled wait went on"
        assert waiting.cancelled()

    asyncio.run(scenario())
