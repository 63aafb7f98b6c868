"""Running jobs in the background: wait for an explanation turn, compute, render, keep.

A job takes one of the ``max_explanations`` turns that synchronous explanations take, so jobs
and requests share the same bounded CPU, by the gate's policy: synchronous first
(``service.common.admission``). A job waits for its turn in state ``queued`` behind every
synchronous explanation waiting (jobs do not count against the synchronous
``explanation_queue``: the job limits bound them); once running, it gives its turn away at its
next batch whenever a synchronous explanation waits, and takes it back before the queued jobs
(it stays ``running`` meanwhile), and its forward passes queue behind interactive ones on the
inference thread. Its work runs on a worker thread with the job's own ``Cancellation`` (a
``BackgroundWork``, which holds the turn); a watcher waits for the job's changes in
the store and cancels it when a ``DELETE`` asks, so the work stops at its next batch, exactly as
when a synchronous client hangs up (the store may be in another process: the watcher is how
the request reaches the process doing the work). Every pass the work runs moves ``progress``
(``progress.PassCounter``). The result is rendered once, in the formats the job was asked for,
and the store keeps only that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from service.common.admission import BackgroundWork, ExplanationGate
from service.common.cancellation import Cancellation, Cancelled
from service.errors import INTERNAL_ERROR, ServiceError
from service.jobs.progress import PassCounter
from service.jobs.store import JobResult, Jobs, JobView

log = logging.getLogger(__name__)
HEARTBEAT_S = 10.0
STORE_RETRY_S = 1.0  # a job's watcher asks an unreachable store again after this
DELETED = "the job was deleted"


Publish = Callable[[dict[str, Any]], None]
"""Changes to a job's record (``partial``: a partial map), from the work's thread."""


@dataclass(frozen=True)
class JobWork:
    """What a job does, both parts on a worker thread: ``compute(cancellation, publish)`` the
    expensive part (its passes go through ``cancellation.batch()``; it may ``publish`` partial
    results); ``finish(value)`` renders the answer; ``planned_passes`` is the compute's plan;
    ``release()``, on the loop once the job has ended however it ended, lets go of what the job
    held (its model)."""

    compute: Callable[[Cancellation, Publish], Any]
    finish: Callable[[Any], JobResult]
    planned_passes: int
    release: Callable[[], None] | None = None


class JobRunner:
    """Starts jobs as tasks of the serving loop and keeps them until they end. ``on_pass`` is
    called for every forward pass of every job (the service counts them in ``/metrics``)."""

    def __init__(
        self, store: Jobs, gate: ExplanationGate, on_pass: Callable[[], None] | None = None
    ) -> None:
        self.store, self.gate, self.on_pass = store, gate, on_pass
        self._running: dict[asyncio.Task[None], BackgroundWork] = {}

    def start(self, job: JobView, work: JobWork) -> None:
        loop = asyncio.get_running_loop()
        counter = PassCounter(work.planned_passes)

        def publish(changes: dict[str, Any]) -> None:  # from the work's thread
            loop.call_soon_threadsafe(self._report, job.id, changes)

        def on_pass() -> None:  # on the work's thread, before each pass
            if self.on_pass is not None:
                self.on_pass()
            publish({"progress": counter.count()})

        cancellation = BackgroundWork(self.gate, on_batch=on_pass)
        task = loop.create_task(self._run(job, work, cancellation, publish), name=f"job {job.id}")
        self._running[task] = cancellation
        task.add_done_callback(self._running.pop)

    async def stop(self) -> None:
        """Cancel every job of this runner and wait for their work to stop (shutdown)."""
        for cancellation in self._running.values():
            cancellation.cancel("the service is shutting down")
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(
        self, job: JobView, work: JobWork, cancellation: BackgroundWork, publish: Publish
    ) -> None:
        watcher = asyncio.create_task(self._watch(job, cancellation))
        try:
            await self._turn_and_work(job, work, cancellation, publish)
        finally:
            if work.release is not None:
                work.release()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _turn_and_work(
        self, job: JobView, work: JobWork, cancellation: BackgroundWork, publish: Publish
    ) -> None:
        try:
            await cancellation.take_turn()
        except Cancelled as exc:
            await self._end(job, "cancelled", error=_error("cancelled", str(exc)))
            return
        try:
            cancellation.check()
            await self.store.update(job.id, {"state": "running"})
            value = await run_in_threadpool(work.compute, cancellation, publish)
            result = await run_in_threadpool(work.finish, value)
        except Cancelled as exc:
            await self._end(job, "cancelled", error=_error("cancelled", str(exc)))
        except ServiceError as exc:  # a mistake found only once the work ran
            await self._end(job, "failed", error=_error(exc.code, exc.message))
        except Exception:
            log.exception("job %s (%s) failed", job.id, job.method)
            await self._end(job, "failed", error=_error(INTERNAL_ERROR, "see the service log"))
        else:
            await self._end(job, "done", progress=1.0, result=result)
        finally:
            cancellation.release_turn()  # none held if it was cancelled while it gave way

    async def _watch(self, job: JobView, cancellation: Cancellation) -> None:
        """Cancel the work as soon as the store says the job was deleted; meanwhile tell the
        store that the job's runner is alive."""
        version = job.version
        while not cancellation.cancelled:
            try:
                view = await self.store.wait(job.id, None, version, HEARTBEAT_S)
                await self.store.beat(job.id)
            except ServiceError:
                return  # forgotten: nothing left to watch
            except Exception as exc:  # the store unreachable for now (Ray: its board restarts)
                log.warning("job %s: its store did not answer (%r); asking again", job.id, exc)
                await asyncio.sleep(STORE_RETRY_S)
                continue
            if view.cancel_requested:
                cancellation.cancel(DELETED)
                return
            if view.is_finished:
                return
            version = view.version

    async def _end(self, job: JobView, state: str, **changes: Any) -> None:
        try:
            await self.store.update(job.id, {"state": state, **changes})
        except Exception:  # the store is gone (shutdown, a restarted board): nothing to keep
            log.warning("job %s ended %s but its store could not be told", job.id, state)

    def _report(self, job_id: str, changes: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self.store.update(job_id, changes))
        task.add_done_callback(_quiet)


def _quiet(task: asyncio.Task[Any]) -> None:
    """A progress report that did not arrive is not worth an error: the next one follows."""
    if not task.cancelled():
        task.exception()


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}
