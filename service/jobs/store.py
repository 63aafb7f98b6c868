"""Where jobs live while they run and for a while after: one ``JobStore`` per app.

A job is made by ``POST /jobs/{method}`` once the request has passed every check the
synchronous endpoint makes; from then on it is read by id. The store bounds what jobs can hold:

- at most ``max_jobs`` unfinished (queued or running) jobs in all, and ``max_jobs_per_key`` per
  API key: one more is 429 ``too_many_jobs``, so a client that floods the queue is told to wait
  rather than making everyone else's jobs slow;
- a finished job (done, failed or cancelled) is kept for ``ttl_s`` seconds, then forgotten: its
  id answers 404 ``unknown_job`` like an id that never existed, as does a job asked for with
  another key (whether a job exists is the owner's business only).

Every change bumps the job's ``version`` and wakes whoever ``wait``s for a newer one: that is
what ``GET /jobs/{id}/events`` streams. The store is used from the event loop only; the work
itself reports from worker threads through ``JobStore.report`` (thread-safe: it hops onto the
loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..cancellation import Cancellation
from ..errors import TooManyJobs, UnknownJob

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "cancelled")
FINISHED: frozenset[JobState] = frozenset({"done", "failed", "cancelled"})
ANONYMOUS = "anonymous"


def owner_of(api_key: str | None) -> str:
    """Who owns a job: a digest of the API key that made it (never the key itself), or
    ``anonymous`` when the service has no key."""
    if not api_key:
        return ANONYMOUS
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass
class JobResult:
    """A finished job's answer, rendered once: the synchronous endpoint's JSON body and, for
    heatmaps, its PNG and overlay renders (so the upload itself is dropped at the end)."""

    body: dict[str, Any]
    renders: dict[str, bytes] = field(default_factory=dict)
    """format name (``png``, ``overlay``) -> PNG bytes"""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Job:
    id: str
    owner: str
    method: str
    parameters: dict[str, Any]
    created_at: float
    """wall-clock seconds (``time.time``), for clients"""
    created: float
    """the store's clock (monotonic), for durations and expiry"""
    cancellation: Cancellation
    state: JobState = "queued"
    progress: float = 0.0
    started: float | None = None
    finished: float | None = None
    error: dict[str, str] | None = None
    result: JobResult | None = None
    partial: dict[str, Any] | None = None
    """the latest partial heatmap (JSON grid), for the sampling methods"""
    version: int = 0

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED


class JobStore:
    """The jobs of one app, bounded in number and kept ``ttl_s`` after they finish."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_jobs: int,
        max_jobs_per_key: int,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[Job, JobState | None], None] | None = None,
    ) -> None:
        self.ttl_s, self.max_jobs, self.max_jobs_per_key = ttl_s, max_jobs, max_jobs_per_key
        self._clock = clock
        self.on_change = on_change
        self._jobs: dict[str, Job] = {}
        self._changed = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None

    def create(
        self, owner: str, method: str, parameters: dict[str, Any], cancellation: Cancellation
    ) -> Job:
        """A new queued job stopped by ``cancellation``, or 429 ``too_many_jobs`` when the
        limits say no."""
        self._loop = asyncio.get_running_loop()
        self.sweep()
        active = [job for job in self._jobs.values() if not job.is_finished]
        if len(active) >= self.max_jobs:
            raise TooManyJobs(
                f"{len(active)} jobs are queued or running, the most this service takes; "
                "retry when one has finished",
                headers={"Retry-After": "5"},
            )
        own = sum(job.owner == owner for job in active)
        if own >= self.max_jobs_per_key:
            raise TooManyJobs(
                f"this API key already has {own} jobs queued or running (at most "
                f"{self.max_jobs_per_key}); wait for one to finish or DELETE one",
                headers={"Retry-After": "5"},
            )
        job = Job(
            id=secrets.token_urlsafe(12),
            owner=owner,
            method=method,
            parameters=parameters,
            created_at=time.time(),
            created=self._clock(),
            cancellation=cancellation,
        )
        self._jobs[job.id] = job
        self._notify(job, None)
        return job

    def get(self, job_id: str, owner: str) -> Job:
        """The job, or 404 ``unknown_job`` (never made, expired, or another key's)."""
        self.sweep()
        job = self._jobs.get(job_id)
        if job is None or not secrets.compare_digest(job.owner, owner):
            raise UnknownJob(
                f"no job {job_id!r}: it never existed, expired ({self.ttl_s:g} s after it "
                "finished) or belongs to another API key"
            )
        return job

    def update(self, job: Job, **changes: Any) -> None:
        """Change the job's fields (state, progress, partial, result, ...) and wake waiters."""
        before = job.state
        if job.is_finished:
            return  # a finished job's record is final
        for name, value in changes.items():
            setattr(job, name, value)
        now = self._clock()
        if job.state == "running" and job.started is None:
            job.started = now
        if job.is_finished:
            job.finished = now
            job.partial = None
        self._notify(job, before)

    def report(self, job: Job, **changes: Any) -> None:
        """``update`` from any thread (the work's, between its batches)."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(lambda: self.update(job, **changes))

    async def wait(self, job: Job, version: int, timeout: float) -> bool:
        """Until the job's version passes ``version`` (True) or ``timeout`` s pass (False)."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: job.version > version), timeout
                )
            except TimeoutError:
                return False
        return True

    def forget(self, job: Job) -> None:
        """Drop a finished job now (``DELETE`` of a finished job)."""
        if job.is_finished:
            self._jobs.pop(job.id, None)

    def sweep(self) -> int:
        """Forget the finished jobs older than the TTL; how many went."""
        cutoff = self._clock() - self.ttl_s
        expired = [
            job_id
            for job_id, job in self._jobs.items()
            if job.finished is not None and job.finished <= cutoff
        ]
        for job_id in expired:
            del self._jobs[job_id]
        return len(expired)

    def counts(self) -> dict[JobState, int]:
        """Jobs held and not expired, by state."""
        cutoff = self._clock() - self.ttl_s
        counts = dict.fromkeys(JOB_STATES, 0)
        for job in self._jobs.values():
            if job.finished is None or job.finished > cutoff:
                counts[job.state] += 1
        return counts

    def cancel_all(self, reason: str) -> None:
        """Stop every unfinished job (the service is shutting down)."""
        for job in list(self._jobs.values()):
            if not job.is_finished:
                job.cancellation.cancel(reason)

    def _notify(self, job: Job, before: JobState | None) -> None:
        job.version += 1
        if self.on_change is not None:
            self.on_change(job, before)
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()
