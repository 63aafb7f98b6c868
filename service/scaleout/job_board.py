"""Jobs in Ray mode: one store that every replica and the gateway share.

A job is made and run by the ``Explain`` replica that got its ``POST /jobs/{method}`` (it has
the upload and the model); its status, events and ``DELETE`` are answered by the gateway's own
app; its progress comes from the replica running it. So the records cannot live in any of
those processes: they live in ``JobBoard``, a Ray Serve deployment of one replica holding the
service's own ``JobStore`` (same bounds, same TTL, same errors), called through its handle.
``RemoteJobs`` is that handle as the ``Jobs`` every app uses: the routes and the runner do not
know which store they talk to. A ``DELETE`` reaches the replica doing the work the same way as
in one process: its runner waits for the job's next version, which says ``cancel_requested``.

The board's errors (404 ``unknown_job``, 409 ``job_not_done``, 429 ``too_many_jobs``) come back
as a ``Refusal`` value and are raised again on the caller's side as the same ``ServiceError``,
so the client's answer is the single-process one. The job metrics are the board's own registry,
published to the ``MetricsBoard`` like every replica's, so ``/metrics`` counts each job once,
and the bounds on finished jobs' results (count, bytes) hold for the whole deployment. A result
crosses to the gateway as the bytes serialised once when its job finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.errors import JobNotDone, ServiceError, TooManyJobs, UnknownJob
from service.jobs.metrics import JobMetrics
from service.jobs.store import JobStore, JobView
from service.observability.metrics import ServiceMetrics
from service.scaleout.publisher import MetricsPublisher
from service.settings import Settings

REFUSALS: dict[str, type[ServiceError]] = {
    error.code: error for error in (UnknownJob, JobNotDone, TooManyJobs)
}
BOARD_NAME = "JobBoard"
# Waits (a runner's watcher, an event stream) hold a call open: far above any replica's count.
MAX_ONGOING_CALLS = 4096


@dataclass(frozen=True)
class Refusal:
    """A store's ``ServiceError``, as a value that crosses processes."""

    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def raise_again(self) -> None:
        raise REFUSALS[self.code](self.message, headers=self.headers or None)


class JobBoard:
    """The Ray Serve deployment that holds every job record (one replica)."""

    def __init__(self, settings: Settings, metrics_board: Any) -> None:
        self.metrics = ServiceMetrics()
        self.store = JobStore.from_settings(settings)
        self.store.on_change = JobMetrics(
            self.metrics.registry, self.store.counts, self.store.results_held
        ).observe
        self.publisher = MetricsPublisher(
            BOARD_NAME,
            lambda: self.metrics.render().decode(),
            lambda replica, text: metrics_board.publish.remote(replica, text),
            lambda replica: metrics_board.withdraw.remote(replica),
        )
        self._publishing = False

    async def call(self, name: str, *args: Any) -> JobView | tuple[bytes, dict] | Refusal:
        """``JobStore.<name>(*args)``; its ``ServiceError`` as a ``Refusal``."""
        if not self._publishing:  # the serving loop runs now: publish from it
            self.publisher.start()
            self._publishing = True
        try:
            return await getattr(self.store, name)(*args)
        except ServiceError as exc:
            if exc.code not in REFUSALS:
                raise
            return Refusal(exc.code, exc.message, dict(exc.headers or {}))

    async def __del__(self) -> None:
        await self.publisher.stop()


class RemoteJobs:
    """``Jobs`` through the ``JobBoard``'s handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def create(self, owner: str, method: str, parameters: dict[str, Any]) -> JobView:
        return await self._call("create", owner, method, parameters)

    async def get(self, job_id: str, owner: str | None) -> JobView:
        return await self._call("get", job_id, owner)

    async def wait(self, job_id: str, owner: str | None, version: int, timeout: float) -> JobView:
        return await self._call("wait", job_id, owner, version, timeout)

    async def update(self, job_id: str, changes: dict[str, Any]) -> JobView:
        return await self._call("update", job_id, changes)

    async def beat(self, job_id: str) -> None:
        await self._call("beat", job_id)

    async def delete(self, job_id: str, owner: str) -> JobView:
        return await self._call("delete", job_id, owner)

    async def render(self, job_id: str, owner: str, fmt: str) -> tuple[bytes, dict[str, str]]:
        return await self._call("render", job_id, owner, fmt)

    def counts(self) -> dict[str, int]:
        return {}  # counted where the jobs are: the board's own metrics

    async def _call(self, name: str, *args: Any) -> Any:
        answer = await self.handle.call.remote(name, *args)
        if isinstance(answer, Refusal):
            answer.raise_again()
        return answer
