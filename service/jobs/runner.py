"""Running jobs in the background: wait for an explanation turn, compute, render, keep.

A job takes one of the ``max_explanations`` turns that synchronous explanations take, so jobs
and requests share the same bounded CPU; it waits for its turn in state ``queued`` (jobs do not
count against the synchronous ``explanation_queue``: the job limits bound them). Its work runs
on a worker thread with the job's ``Cancellation``: ``DELETE /jobs/{id}`` cancels it, and the
work stops at its next batch, exactly as when a synchronous client hangs up. Every pass the
work runs moves ``progress`` (``progress.PassCounter``). The result is rendered once, in every
format the synchronous endpoint offers, and the job keeps only that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from ..cancellation import Cancelled
from ..errors import INTERNAL_ERROR, ServiceError
from .store import Job, JobResult, JobStore

if TYPE_CHECKING:
    from ..state import ExplanationGate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobWork:
    """What a job does, both parts on a worker thread: ``compute(job)`` the expensive part
    (its passes check ``job.cancellation``); ``finish(value, compute_ms)`` renders the answer."""

    compute: Callable[[Job], Any]
    finish: Callable[[Any, float], JobResult]


class JobRunner:
    """Starts jobs as tasks of the serving loop and keeps them until they end."""

    def __init__(self, store: JobStore, gate: ExplanationGate) -> None:
        self.store, self.gate = store, gate
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, job: Job, work: JobWork) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job, work), name=f"job {job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel every job and wait for their work to stop (the service is shutting down)."""
        self.store.cancel_all("the service is shutting down")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, job: Job, work: JobWork) -> None:
        try:
            await job.cancellation.guard(self.gate.running.acquire())
        except Cancelled as exc:
            self.store.update(job, state="cancelled", error=_error("cancelled", str(exc)))
            return
        try:
            job.cancellation.check()
            self.store.update(job, state="running")
            started = time.perf_counter()
            value = await run_in_threadpool(work.compute, job)
            compute_ms = (time.perf_counter() - started) * 1000
            result = await run_in_threadpool(work.finish, value, compute_ms)
        except Cancelled as exc:
            self.store.update(job, state="cancelled", error=_error("cancelled", str(exc)))
        except ServiceError as exc:  # a mistake found only once the work ran (a bad layer)
            self.store.update(job, state="failed", error=_error(exc.code, exc.message))
        except Exception:
            log.exception("job %s (%s) failed", job.id, job.method)
            self.store.update(
                job, state="failed", error=_error(INTERNAL_ERROR, "the job failed: see the log")
            )
        else:
            self.store.update(job, state="done", progress=1.0, result=result)
        finally:
            self.gate.running.release()


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}
