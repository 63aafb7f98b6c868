"""The job runner's watcher: a store that fails for a while does not stop it from passing a
DELETE on to the work."""

from __future__ import annotations

import asyncio
import time

from service.common.admission import ExplanationGate
from service.jobs import runner as runner_module
from service.jobs.runner import JobRunner, JobWork
from service.jobs.store import JobResult, JobStore

PLANNED = 500
WAIT_S = 10.0


class FlakyStore(JobStore):
    """Its first ``wait`` fails as a Ray handle's call does while the job board restarts."""

    failures = 1

    async def wait(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the job board's replica is restarting")
        return await super().wait(*args, **kwargs)


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S:g} s: {what}"
        await asyncio.sleep(0.01)


def test_a_delete_after_the_store_failed_once_still_stops_the_work(monkeypatch):
    monkeypatch.setattr(runner_module, "STORE_RETRY_S", 0.01)
    passes: list[int] = []

    def compute(cancellation, publish):
        for index in range(PLANNED):
            cancellation.batch()  # raises Cancelled once the job is deleted
            passes.append(index)
            time.sleep(0.01)
        return "all passes"

    async def scenario() -> None:
        store = FlakyStore(ttl_s=60, max_jobs=4, max_jobs_per_key=4)
        runner = JobRunner(store, ExplanationGate(concurrent=1, queue=1))
        job = await store.create("owner", "lime", {})
        runner.start(job, JobWork(compute, lambda value: JobResult(b"{}"), PLANNED))
        await _until(lambda: store.failures == 0 and passes, "the store failed and work began")
        await store.delete(job.id, "owner")  # DELETE /jobs/{id}
        ended = None

        async def finished() -> bool:
            nonlocal ended
            ended = await store.get(job.id, "owner")
            return ended.is_finished

        deadline = time.monotonic() + WAIT_S
        while not await finished():
            assert time.monotonic() < deadline, "the deleted job did not end"
            await asyncio.sleep(0.01)
        assert ended is not None and ended.state == "cancelled"
        assert len(passes) < PLANNED
        await runner.stop()

    asyncio.run(scenario())
