"""A job's event stream (``GET /jobs/{id}/events``), made once per job however many read it.

One ``Broadcast`` per job that someone watches: a task that waits for the job's changes in
the store, serialises each as one Server-Sent Event (at most one per ``interval`` s) and keeps
only the newest. Its readers each send the newest event they have not sent yet, so a slow
reader skips states it was too slow for (coalesced) instead of queueing them, and a hundred
readers cost the store one waiter and the CPU one serialisation per event. The broadcast ends
with a final event and the readers close after sending it:

- the job's last state (``done``, ``failed``, ``cancelled``) once it finishes: that event is
  kept, so a reader behind it still ends with it when the job has since expired or been
  forgotten;
- ``gone`` (with an ``error``: ``unknown_job``) when the job is forgotten before the broadcast
  saw it finish (deleted a second time, expired, evicted for newer results).

``EventStreams`` holds the broadcasts of one app and bounds the streams: at most
``per_job`` open on one job and ``per_key`` per owner over all its jobs; one more is 429
``too_many_streams``. A reader that stops reading is the server's business
(``Settings.write_timeout_s`` drops its connection): here it only stops taking new events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from service.errors import INTERNAL_ERROR, ServiceError, TooManyStreams
from service.jobs.store import Jobs, JobView, who

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
KEEPALIVE = b": keepalive\n\n"
GONE = "gone"
RETRY_AFTER_S = "5"


def event_bytes(job: JobView) -> bytes:
    """One SSE event of the job's state: ``id`` its version, ``data`` the JSON of ``state``,
    ``progress``, ``elapsed_s``, ``remaining_s`` and, when there, ``heatmap`` (a partial map),
    ``error`` and the result's summary (a done explanation's ``quality``)."""
    data: dict[str, Any] = {
        "state": job.state,
        "progress": job.progress,
        "elapsed_s": job.elapsed_s,
        "remaining_s": job.remaining_s,
    }
    if job.partial is not None:
        data["heatmap"] = job.partial
    if job.error is not None:
        data["error"] = job.error
    data.update(job.summary)
    return _event(job.version, data)


def gone_bytes(version: int, code: str, message: str) -> bytes:
    """The final event of a job forgotten while it was watched: state ``gone``, and why."""
    return _event(version + 1, {"state": GONE, "error": {"code": code, "message": message}})


def _event(version: int, data: dict[str, Any]) -> bytes:
    return f"id: {version}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Broadcast:
    """The events of one job: the newest one (``latest``, number ``seq``) and whether it is
    the last (``ended``). Runs from ``start`` until the job ends or nobody reads."""

    def __init__(self, store: Jobs, job: JobView, interval: float, keepalive_s: float) -> None:
        self.store, self.job_id = store, job.id
        self.interval, self.keepalive_s = interval, keepalive_s
        self.latest = event_bytes(job)
        self.seq, self.beats = 1, 0
        self.ended = job.is_finished
        self.readers = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._first = job

    def start(self) -> None:
        if self._task is None and not self.ended:
            self._task = asyncio.get_running_loop().create_task(
                self._run(self._first), name=f"events of job {self.job_id}"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def read(self) -> AsyncIterator[bytes]:
        """The events for one reader: the newest now, then each newer one it gets to, a
        keepalive comment when nothing changed for ``keepalive_s``; ends after the last."""
        sent_seq, sent_beats = 0, self.beats
        while True:
            changed = self._changed
            if self.seq > sent_seq:
                sent_seq, sent_beats = self.seq, self.beats
                yield self.latest
                if self.ended and sent_seq == self.seq:
                    return
            elif self.beats > sent_beats:
                sent_beats = self.beats
                yield KEEPALIVE
            else:
                await changed.wait()

    def _publish(self, event: bytes | None, *, last: bool = False) -> None:
        """A new newest event (None: a keepalive) for every reader."""
        if event is None:
            self.beats += 1
        else:
            self.latest, self.seq = event, self.seq + 1
        self.ended = self.ended or last
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self, job: JobView) -> None:
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        try:
            while not job.is_finished:
                newer = await self.store.wait(job.id, None, job.version, self.keepalive_s)
                if newer.version == job.version:
                    self._publish(None)
                    continue
                pause = last_sent + self.interval - loop.time()
                if pause > 0 and not newer.is_finished:
                    await asyncio.sleep(pause)
                    newer = await self.store.get(job.id, None)  # the newest after the pause
                job, last_sent = newer, loop.time()
                self._publish(event_bytes(job), last=job.is_finished)
        except ServiceError as exc:  # forgotten (or, in Ray mode, its board is gone)
            self._publish(gone_bytes(job.version, exc.code, exc.message), last=True)
        except Exception:  # never leave the readers waiting for an event that cannot come
            log.exception("the event stream of job %s broke", job.id)
            message = "the job's events could not be read; see the service log"
            self._publish(gone_bytes(job.version, INTERNAL_ERROR, message), last=True)


class EventStreams:
    """The broadcasts of one app's jobs and the bounds on their readers."""

    def __init__(
        self,
        store: Jobs,
        *,
        interval: float,
        per_job: int,
        per_key: int,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.store, self.interval, self.keepalive_s = store, interval, keepalive_s
        self.per_job, self.per_key = per_job, per_key
        self._broadcasts: dict[str, Broadcast] = {}
        self._per_owner: Counter[str] = Counter()
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def open(self) -> int:
        """Streams open now, over all jobs."""
        return sum(self._per_owner.values())

    def subscribe(self, job: JobView, owner: str) -> Subscription:
        """A place to read ``job``'s events (owned by ``owner``, checked by the caller); 429
        ``too_many_streams`` when the job or the owner already has its most. The caller must
        ``close`` it (``Subscription`` is an async context manager)."""
        broadcast = self._broadcasts.get(job.id)
        if broadcast is not None and broadcast.readers >= self.per_job:
            raise TooManyStreams(
                f"{broadcast.readers} event streams are open on job {job.id}, the most one job "
                "takes; close one, or poll GET /jobs/{id}",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        if self._per_owner[owner] >= self.per_key:
            raise TooManyStreams(
                f"{who(owner)} already has {self._per_owner[owner]} event streams open (at "
                f"most {self.per_key}); close one, or poll GET /jobs/{{id}}",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        if broadcast is None:
            broadcast = Broadcast(self.store, job, self.interval, self.keepalive_s)
            self._broadcasts[job.id] = broadcast
            broadcast.start()
        broadcast.readers += 1
        self._per_owner[owner] += 1
        return Subscription(self, broadcast, owner)

    async def close_all(self) -> None:
        """Stop every broadcast (shutdown)."""
        for broadcast in list(self._broadcasts.values()):
            await broadcast.stop()
        self._broadcasts.clear()

    def _leave(self, broadcast: Broadcast, owner: str) -> None:
        broadcast.readers -= 1
        self._per_owner[owner] -= 1
        if self._per_owner[owner] <= 0:
            del self._per_owner[owner]
        if broadcast.readers == 0 and self._broadcasts.get(broadcast.job_id) is broadcast:
            del self._broadcasts[broadcast.job_id]  # nobody reads: stop waiting for the job
            task = asyncio.get_running_loop().create_task(broadcast.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)


class Subscription:
    """One reader's place among a job's streams, held until ``close`` (once)."""

    def __init__(self, streams: EventStreams, broadcast: Broadcast, owner: str) -> None:
        self.streams, self.broadcast, self.owner = streams, broadcast, owner
        self.closed = False

    def events(self) -> AsyncIterator[bytes]:
        return self.broadcast.read()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.streams._leave(self.broadcast, self.owner)
