"""Where jobs live while they run and for a while after.

A job is made by ``POST /jobs/{method}`` once the request has passed every check the
synchronous endpoint makes; from then on it is read by id. The store bounds what jobs can hold:

- at most ``max_jobs`` unfinished (queued or running) jobs in all, and ``max_jobs_per_key`` per
  API key: one more is 429 ``too_many_jobs``, so a client that floods the queue is told to wait
  rather than making everyone else's jobs slow;
- a finished job (done, failed or cancelled) is kept for ``ttl_s`` seconds, then forgotten: its
  id answers 404 ``unknown_job`` like an id that never existed, as does a job asked for with
  another key (whether a job exists is its owner's business only);
- at most ``max_results`` finished jobs, holding at most ``max_result_bytes`` of results (JSON
  and renders), are kept at once: a job that finishes beyond either makes the oldest finished
  ones forgotten first (404 ``unknown_job`` as if expired; ``/metrics`` counts them), and a
  result larger than ``max_result_bytes`` alone fails its job with ``result_too_large``. So
  what finished jobs hold is bounded whatever the rate at which clients make them.

A result is serialised once, when its job finishes (``JobResult.of``), and kept as bytes: a
status or result read splices those bytes into its answer and never serialises them again.

The store only keeps records; the work runs elsewhere (``runner.JobRunner``), reports through
``update`` and learns of a ``delete`` by ``wait``ing for the job's next version. Every change
bumps the version and wakes the waiters, which is also what ``GET /jobs/{id}/events`` streams.
Everything a caller gets is a ``JobView``: a picklable snapshot with its times computed here, on
the store's clock, so the store can live in another process (in Ray mode it is one deployment
that every replica calls: ``service.scaleout.job_board``). ``JobStore`` lives on one event
loop; ``Jobs`` is what the routes and the runner need of any store.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from service.errors import JobNotDone, TooManyJobs, UnknownJob
from service.settings import Settings

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "cancelled")
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})
ANONYMOUS = "anonymous"
RETRY_AFTER_S = "5"
# An unfinished job whose runner has not been heard of for this long has lost it (the replica
# running it died): it fails rather than stay "running" for ever. Runners beat every
# ``runner.HEARTBEAT_S``.
LOST_AFTER_S = 60.0
# A failed job's error code (never an HTTP status) when its result alone is larger than every
# byte the store keeps for finished jobs.
RESULT_TOO_LARGE = "result_too_large"


def who(owner: str) -> str:
    """The owner as a refusal names it: an API key, or every client where the service has
    none (they share one quota)."""
    return "every client (no API keys are set)" if owner == ANONYMOUS else "this API key"


def owner_of(api_key: str | None) -> str:
    """Who owns a job: a digest of the API key that made it (never the key itself), or
    ``anonymous`` when the service has no key."""
    if not api_key:
        return ANONYMOUS
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class JobResult:
    """A finished job's answer, rendered once: the synchronous endpoint's JSON body, serialised,
    and the PNG render it was asked for (so the upload itself can be dropped)."""

    body: bytes
    """the JSON answer, serialised once (``of``)"""
    renders: dict[str, bytes] = field(default_factory=dict)
    """format name (``png``, ``overlay``) -> PNG bytes"""
    headers: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    """small parts of the answer that the final event carries too (an explanation's
    ``quality``): the result itself may be megabytes"""

    @classmethod
    def of(
        cls,
        body: BaseModel,
        renders: dict[str, bytes] | None = None,
        headers: dict[str, str] | None = None,
        summary: dict[str, Any] | None = None,
    ) -> JobResult:
        """``body`` serialised to JSON bytes here, once (on the job's worker thread)."""
        return cls(body.model_dump_json().encode(), renders or {}, headers or {}, summary or {})

    @property
    def size(self) -> int:
        """Bytes this result holds (what ``max_result_bytes`` counts)."""
        return len(self.body) + sum(len(png) for png in self.renders.values())


@dataclass(frozen=True)
class ResultsHeld:
    """What finished jobs hold now, and how many were forgotten to keep it bounded."""

    jobs: int
    bytes: int
    evicted: int


@dataclass(frozen=True)
class JobView:
    """A job as a caller sees it at one moment (times in seconds, computed by the store)."""

    id: str
    method: str
    parameters: dict[str, Any]
    state: JobState
    progress: float
    created_at: float
    """wall-clock time the job was made (Unix seconds)"""
    queue_wait_s: float
    elapsed_s: float
    remaining_s: float | None
    error: dict[str, str] | None
    result_json: bytes | None
    """the JSON answer, serialised once when the job finished (once done)"""
    summary: dict[str, Any]
    """``JobResult.summary`` once done, else empty"""
    partial: dict[str, Any] | None
    version: int
    cancel_requested: bool

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED


@dataclass
class _Job:
    id: str
    owner: str
    method: str
    parameters: dict[str, Any]
    created_at: float
    created: float
    state: JobState = "queued"
    progress: float = 0.0
    started: float | None = None
    finished: float | None = None
    error: dict[str, str] | None = None
    result: JobResult | None = None
    partial: dict[str, Any] | None = None
    version: int = 0
    cancel_requested: bool = False
    heard: float = 0.0
    """when its runner last reported (the store's clock)"""

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED


class Jobs(Protocol):
    """What the routes and the runner use of a job store, in this process or another.
    ``owner`` None: the service itself (the runner), which may see every job."""

    async def create(self, owner: str, method: str, parameters: dict[str, Any]) -> JobView: ...

    async def get(self, job_id: str, owner: str | None) -> JobView: ...

    async def wait(
        self, job_id: str, owner: str | None, version: int, timeout: float
    ) -> JobView: ...

    async def update(self, job_id: str, changes: dict[str, Any]) -> JobView: ...

    async def beat(self, job_id: str) -> None: ...

    async def delete(self, job_id: str, owner: str) -> JobView: ...

    async def render(self, job_id: str, owner: str, fmt: str) -> tuple[bytes, dict[str, str]]: ...

    def counts(self) -> dict[str, int]: ...


# Defaults of the bounds on finished jobs (``Settings.job_results_max*`` in the service).
MAX_RESULTS = 512
MAX_RESULT_BYTES = 256 * 1024 * 1024


class JobStore:
    """The jobs of one process, bounded in number, their finished ones in number and bytes,
    and kept ``ttl_s`` after they finish."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_jobs: int,
        max_jobs_per_key: int,
        max_results: int = MAX_RESULTS,
        max_result_bytes: int = MAX_RESULT_BYTES,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[JobView, str | None], None] | None = None,
    ) -> None:
        """``on_change(view, state_before)`` is called after every change (before None: the
        job is new)."""
        self.ttl_s, self.max_jobs, self.max_jobs_per_key = ttl_s, max_jobs, max_jobs_per_key
        self.max_results, self.max_result_bytes = max_results, max_result_bytes
        self.on_change = on_change
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        # finished jobs, oldest first -> the bytes their result holds
        self._finished: OrderedDict[str, int] = OrderedDict()
        self._evicted = 0
        self._changed = asyncio.Condition()

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """The store the service's settings describe (``max_jobs*``, ``job_ttl_s``,
        ``job_results_max*``)."""
        return cls(
            ttl_s=settings.job_ttl_s,
            max_jobs=settings.max_jobs,
            max_jobs_per_key=settings.max_jobs_per_key,
            max_results=settings.job_results_max,
            max_result_bytes=settings.job_results_max_bytes,
        )

    async def create(self, owner: str, method: str, parameters: dict[str, Any]) -> JobView:
        """A new queued job, or 429 ``too_many_jobs`` when the limits say no."""
        await self._sweep()
        # a job being cancelled stops within a batch: it no longer holds a place (a page that
        # re-runs its explanations cancels the old jobs and makes new ones at once)
        active = [j for j in self._jobs.values() if not (j.is_finished or j.cancel_requested)]
        if len(active) >= self.max_jobs:
            raise TooManyJobs(
                f"{len(active)} jobs are queued or running, the most this service takes; "
                "retry when one has finished",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        own = sum(job.owner == owner for job in active)
        if own >= self.max_jobs_per_key:
            raise TooManyJobs(
                f"{who(owner)} already has {own} jobs queued or running (at most "
                f"{self.max_jobs_per_key}); wait for one to finish or DELETE one",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        job = _Job(
            id=secrets.token_urlsafe(12),
            owner=owner,
            method=method,
            parameters=parameters,
            created_at=time.time(),
            created=self._clock(),
            heard=self._clock(),
        )
        self._jobs[job.id] = job
        return await self._changed_job(job, None)

    async def get(self, job_id: str, owner: str | None) -> JobView:
        """The job, or 404 ``unknown_job`` (never made, expired, or another key's)."""
        return self._view(await self._find(job_id, owner))

    async def wait(self, job_id: str, owner: str | None, version: int, timeout: float) -> JobView:
        """The job once its version passes ``version``, or as it is after ``timeout`` s."""
        job = await self._find(job_id, owner)
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: job.version > version)
            except TimeoutError:
                pass
        return self._view(job)

    async def update(self, job_id: str, changes: dict[str, Any]) -> JobView:
        """Change the job's fields (``state``, ``progress``, ``partial``, ``error``,
        ``result``); a finished job's record is final."""
        job = await self._find(job_id, None)
        if job.is_finished:
            return self._view(job)
        before = job.state
        for name, value in changes.items():
            setattr(job, name, value)
        now = job.heard = self._clock()
        if job.state == "running" and job.started is None:
            job.started = now
        if job.is_finished:
            self._finish(job, now)
        return await self._changed_job(job, before)

    async def beat(self, job_id: str) -> None:
        """The job's runner is alive (it waits for a turn, or its work is between reports)."""
        (await self._find(job_id, None)).heard = self._clock()

    async def delete(self, job_id: str, owner: str) -> JobView:
        """Ask an unfinished job to stop (its runner is waiting for this change), or forget
        a finished one."""
        job = await self._find(job_id, owner)
        if job.is_finished:
            self._forget(job.id)
            return self._view(job)
        job.cancel_requested = True
        return await self._changed_job(job, job.state)

    async def render(self, job_id: str, owner: str, fmt: str) -> tuple[bytes, dict[str, str]]:
        """The done job's answer as ``fmt`` (``json`` or one of its renders) and its headers;
        409 ``job_not_done`` before (or if it never will be)."""
        job = await self._find(job_id, owner)
        if job.result is None:
            why = f": {job.error['message']}" if job.error else ""
            raise JobNotDone(f"job {job_id} is {job.state}{why}; its result comes once it is done")
        if fmt == "json":
            return job.result.body, job.result.headers
        if fmt not in job.result.renders:
            formats = ", ".join(["json", *job.result.renders])
            raise JobNotDone(f"a {job.method} job has no {fmt} result; its formats: {formats}")
        return job.result.renders[fmt], job.result.headers

    def results_held(self) -> ResultsHeld:
        """Finished jobs held now, the bytes of their results, and how many were forgotten
        (oldest first) to stay within ``max_results`` and ``max_result_bytes``."""
        return ResultsHeld(len(self._finished), sum(self._finished.values()), self._evicted)

    def counts(self) -> dict[str, int]:
        """Jobs held and not expired, by state."""
        cutoff = self._clock() - self.ttl_s
        counts: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
        for job in self._jobs.values():
            if job.finished is None or job.finished > cutoff:
                counts[job.state] += 1
        return counts

    async def _find(self, job_id: str, owner: str | None) -> _Job:
        await self._sweep()
        job = self._jobs.get(job_id)
        if job is None or (owner is not None and not secrets.compare_digest(job.owner, owner)):
            raise UnknownJob(
                f"no job {job_id!r}: it never existed, was deleted, expired ({self.ttl_s:g} s "
                f"after it finished), was forgotten to make room for newer results (at most "
                f"{self.max_results} finished jobs and {self.max_result_bytes} bytes of "
                "results are kept; the oldest go first) or belongs to another API key"
            )
        return job

    def _finish(self, job: _Job, now: float) -> None:
        """Mark ``job`` finished at ``now`` and make room for what it holds: the oldest
        finished jobs are forgotten until it fits in ``max_results`` and ``max_result_bytes``.
        A result that could never fit fails the job instead (it keeps only its error)."""
        job.finished = now
        job.partial = None
        size = job.result.size if job.result is not None else 0
        if size > self.max_result_bytes:
            job.error = {
                "code": RESULT_TOO_LARGE,
                "message": f"the result is {size} bytes, more than the {self.max_result_bytes} "
                "this service keeps for all finished jobs; ask for format=json, or send a "
                "smaller image",
            }
            job.state, job.result, size = "failed", None, 0
        held = sum(self._finished.values())
        while self._finished and (
            len(self._finished) >= self.max_results or held + size > self.max_result_bytes
        ):
            oldest, freed = self._finished.popitem(last=False)
            del self._jobs[oldest]
            held -= freed
            self._evicted += 1
        self._finished[job.id] = size

    def _forget(self, job_id: str) -> None:
        del self._jobs[job_id]
        self._finished.pop(job_id, None)

    async def _sweep(self) -> None:
        """Forget the finished jobs older than the TTL; fail the unfinished ones whose runner
        went silent."""
        now = self._clock()
        for job_id in [
            job_id
            for job_id, job in self._jobs.items()
            if job.finished is not None and job.finished <= now - self.ttl_s
        ]:
            self._forget(job_id)
        for job in [j for j in self._jobs.values() if not j.is_finished]:
            if now - job.heard > LOST_AFTER_S:
                before, job.state = job.state, "failed"
                job.error = {
                    "code": "job_lost",
                    "message": f"the worker running the job stopped answering for "
                    f"{LOST_AFTER_S:g} s (it stopped or was replaced); run the job again",
                }
                self._finish(job, now)
                await self._changed_job(job, before)

    async def _changed_job(self, job: _Job, before: str | None) -> JobView:
        job.version += 1
        view = self._view(job)
        if self.on_change is not None:
            self.on_change(view, before)
        async with self._changed:
            self._changed.notify_all()
        return view

    def _view(self, job: _Job) -> JobView:
        now = self._clock()
        end = job.finished if job.finished is not None else now
        elapsed = 0.0 if job.started is None else end - job.started
        waited = (job.started if job.started is not None else end) - job.created
        remaining = None
        if job.is_finished:
            remaining = 0.0
        elif job.state == "running" and job.progress > 0:
            remaining = elapsed * (1 - job.progress) / job.progress
        return JobView(
            id=job.id,
            method=job.method,
            parameters=job.parameters,
            state=job.state,
            progress=round(job.progress, 4),
            created_at=job.created_at,
            queue_wait_s=round(waited, 3),
            elapsed_s=round(elapsed, 3),
            remaining_s=None if remaining is None else round(remaining, 3),
            error=job.error,
            result_json=job.result.body if job.result is not None else None,
            summary=job.result.summary if job.result is not None else {},
            partial=job.partial,
            version=job.version,
            cancel_requested=job.cancel_requested,
        )
