"""Inference: one ONNX Runtime session, and a dynamic batcher in front of it.

Concurrent ``/predict`` requests each submit one preprocessed image to ``DynamicBatcher``; it
collects them for at most ``batch_timeout_ms`` after the oldest arrived (or until
``max_batch_size``), runs them as one batch and hands each caller its row - the scheme of
Triton's dynamic batcher. All model runs, batched predictions and the explanation methods'
forward passes alike, go through one inference thread (``InferenceThread``), so they queue
instead of fighting over the cores; ONNX Runtime parallelises inside each run.

The inference thread serves interactive work first (``service.common.admission.Priority``):
``/predict`` batches and synchronous explanations' chunks run before every job chunk queued
there, first come, first served within each; a job's chunk never interrupts a run, so
interactive work waits at most the one job chunk already running (up to ``max_batch_size``
images). Without this, each running job keeps a chunk queued at all times and every ``/predict``
batch waits behind them.

Work whose client has gone is dropped (``service.common.cancellation``): a chunk checks its
``Cancellation`` when its turn on the inference thread comes, so chunks queued behind other
work never run; ``submit`` gives up its place in the batcher. ``Cancellation.batch()`` (which
counts the pass, and where a job gives its explanation turn away) runs on the thread that asks
for the pass, never on the inference thread, which must never wait for other work.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
from opentelemetry.context import Context

from service.bundle.format import EMBEDDING_OUTPUT
from service.common.admission import Priority, priority_of
from service.common.cancellation import Cancellation
from service.observability import tracing

log = logging.getLogger(__name__)
T = TypeVar("T")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class EngineError(Exception):
    """The ONNX model cannot be run as asked (e.g. CUDA requested but unavailable)."""


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers, in priority order, for ``requested`` = auto | cpu | cuda."""
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise EngineError(
                f"providers=cuda, but ONNX Runtime offers only {available}; install "
                "onnxruntime-gpu (the gpu extra) on a machine with a CUDA device, or use auto/cpu"
            )
        return [CUDA, CPU]
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise EngineError(f"unknown providers {requested!r}; valid: auto, cpu, cuda")


def create_session(
    model_path: Path, providers: str, threads: int, graph: bytes | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime session on the providers asked for; logs which one runs. ``graph``: the
    serialised graph to run instead of ``model_path``'s (one built at load; ``model_path`` then
    only names it in the log)."""
    if providers != "cpu" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels (installed with torch) this way
        ort.preload_dlls()
    available = ort.get_available_providers()
    chosen = choose_providers(providers, available)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle ORT threads would otherwise spin between runs, taking the cores that the event loop
    # and image decoding need while the next batch is being collected. Spinning only within a
    # run (session.force_spinning_stop) ran one face 0.6 ms faster in ORT alone, but in the
    # service gained nothing measurable and made RISE (torch's masks between ORT runs) 15 %
    # slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model_path) if graph is None else graph
    session = ort.InferenceSession(source, sess_options=options, providers=chosen)
    active = session.get_providers()
    if providers == "cuda" and active[0] != CUDA:
        raise EngineError(f"providers=cuda, but ONNX Runtime runs on {active[0]}")
    if providers == "auto" and CUDA not in available:
        log.info("no CUDA execution provider in this onnxruntime; running on CPU")
    log.info(
        "ONNX Runtime %s runs %s on %s (intra-op threads: %s)",
        ort.__version__,
        model_path.name,
        active[0],
        threads or f"auto, {os.cpu_count()} cores",
    )
    return session


@dataclass(frozen=True)
class BatchStats:
    """How one request went through the batcher."""

    batch_size: int
    queue_ms: float
    """from submission until its batch started running"""
    inference_ms: float
    """the batch's model run"""


@dataclass
class _Pending:
    item: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, BatchStats]]
    submitted_at: float
    trace: Context | None = None
    """the submitting request's trace context (None while tracing is off)"""


@dataclass(order=True)
class _Queued:
    """One run waiting for the inference thread, ordered by (priority, arrival)."""

    priority: int
    arrival: int
    future: Future[Any] = field(compare=False)
    run: Callable[[], Any] = field(compare=False)


class InferenceThread(Executor):
    """One thread that runs what it is given in priority order (``Priority``, lower first),
    first come, first served within a priority; a run in progress is never interrupted.
    ``submit`` (what ``loop.run_in_executor`` calls) is interactive; ``submit_at`` names the
    priority. ``shutdown`` runs what is already queued, then stops the thread."""

    def __init__(self, name: str = "inference") -> None:
        self._queue: list[_Queued] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self.submit_at(Priority.INTERACTIVE, fn, *args, **kwargs)

    def submit_at(
        self, priority: Priority, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Future[T]:
        future: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the inference thread is shut down")
            run = _Queued(priority, next(self._order), future, partial(fn, *args, **kwargs))
            heapq.heappush(self._queue, run)
            self._ready.notify()
        return future

    @property
    def queued(self) -> int:
        """Runs waiting for the thread."""
        with self._ready:
            return len(self._queue)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._closed = True
            if cancel_futures:
                for queued in self._queue:
                    queued.future.cancel()
            self._ready.notify()
        if wait:
            self._thread.join()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                queued = heapq.heappop(self._queue)
            if not queued.future.set_running_or_notify_cancel():
                continue
            try:
                result = queued.run()
            except BaseException as exc:  # the caller gets it, the thread lives on
                queued.future.set_exception(exc)
            else:
                queued.future.set_result(result)


BatchObserver = Callable[[int, float, float], None]
"""Called after every batch with (batch size, seconds of inference, seconds the oldest waited)."""


Admitted = Callable[[], int]
"""How many requests are admitted that may still hand the batcher an input (the service's image
requests in progress, ``InFlightLimiter.active``)."""


class DynamicBatcher:
    """Collects single inputs into batches for ``run``: ``(N, ...) -> (N, ...)``.

    A batch waits up to ``timeout_s`` after its first input for more, but with ``admitted`` only
    while it holds fewer inputs than there are admitted requests: once every request in
    progress is in the batch, no other can join it in time, so it runs at once. A lone request
    then costs no wait, and a burst still batches (its requests are admitted before they reach
    the batcher). Without ``admitted`` every batch waits the whole timeout for a full batch.

    ``start()`` and ``submit()`` must be called from the event loop that serves requests.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        *,
        max_batch_size: int,
        timeout_s: float,
        observer: BatchObserver | None = None,
        admitted: Admitted | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._run = run
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self._observer = observer
        self._admitted = admitted
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inputs: np.ndarray | None = None
        self._held: list[_Pending] = []  # the batch being collected or run

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Stop collecting; callers still waiting (queued, or in the batch being collected
        or run) get ``asyncio.CancelledError``."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        assert self._queue is not None
        for pending in self._held:
            pending.future.cancel()  # no-op for those already answered
        self._held = []
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    @property
    def pending(self) -> int:
        """Inputs waiting for a batch."""
        return 0 if self._queue is None else self._queue.qsize()

    async def submit(self, item: np.ndarray) -> tuple[np.ndarray, BatchStats]:
        """Run one input (without the batch axis); returns its output row and batch stats."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("batcher is not running")
        future: asyncio.Future[tuple[np.ndarray, BatchStats]] = (
            asyncio.get_running_loop().create_future()
        )
        pending = _Pending(item, future, time.perf_counter(), tracing.current_context())
        self._queue.put_nowait(pending)
        return await future

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            self._held = []
            await self._collect(self._queue, self._held)
            batch = [pending for pending in self._held if not pending.future.done()]  # caller gone
            if batch:
                await self._run_batch(batch)

    async def _collect(self, queue: asyncio.Queue[_Pending], batch: list[_Pending]) -> None:
        """Fill ``batch`` (empty) from ``queue``: at least one input, then those that come
        before the first one's deadline, up to a full batch."""
        batch.append(await queue.get())
        deadline = batch[0].submitted_at + self.timeout_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            if self._admitted is not None and len(batch) >= self._admitted():
                break  # every request in progress is in the batch: none can join it in time
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await queue.get())
            except TimeoutError:
                break

    async def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            inputs = self._stacked([pending.item for pending in batch])
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._executor, self._run, inputs)
        except Exception as exc:  # every waiting caller gets the failure, the batcher lives on
            log.exception("batch of %d failed", len(batch))
            trace_batch(batch, started, time.perf_counter(), exc)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        inference_s = time.perf_counter() - started
        trace_batch(batch, started, started + inference_s)
        if self._observer is not None:
            self._observer(len(batch), inference_s, started - batch[0].submitted_at)
        for row, pending in zip(outputs, batch, strict=True):
            if not pending.future.done():
                stats = BatchStats(
                    batch_size=len(batch),
                    queue_ms=(started - pending.submitted_at) * 1000,
                    inference_ms=inference_s * 1000,
                )
                pending.future.set_result((row, stats))

    def _stacked(self, items: list[np.ndarray]) -> np.ndarray:
        """``items`` stacked in one array kept for every batch: batches run one at a time, and
        a fresh array of a full batch (8.6 MiB) would be mapped afresh and faulted in under the
        service's malloc policy, which made ONNX Runtime's run of it about a tenth slower."""
        shape, dtype = (self.max_batch_size, *items[0].shape), items[0].dtype
        if self._inputs is None or self._inputs.shape != shape or self._inputs.dtype != dtype:
            self._inputs = np.empty(shape, dtype=dtype)
        return np.stack(items, out=self._inputs[: len(items)])


def trace_batch(
    batch: list[_Pending], started: float, ended: float, error: Exception | None = None
) -> None:
    """Each traced request of ``batch`` gets a ``batch wait`` span (from its submission until
    the batch ran) and an ``inference`` span (the batch's run, linked to the other traced
    requests that shared it), both in its own trace."""
    traced = [pending.trace for pending in batch if pending.trace is not None]
    size = {"celebxai.batch.size": len(batch)}
    for pending in batch:
        if pending.trace is None:
            continue
        tracing.record("batch wait", pending.trace, pending.submitted_at, started, size)
        links = [tracing.link_to(other) for other in traced if other is not pending.trace]
        tracing.record("inference", pending.trace, started, ended, size, links, error)


def trace_chunk(parent: Context, queued: float, size: int, done: Future[Any]) -> None:
    """The ``explanation batch`` span of one chunk of forward passes run for an explanation,
    from when it was queued on the inference thread until it ran (``done``)."""
    error = None if done.cancelled() else done.exception()
    attributes = {"celebxai.batch.size": size}
    tracing.record("explanation batch", parent, queued, time.perf_counter(), attributes, (), error)


class Engine:
    """The ONNX session, its executor and the dynamic batcher: the one way to run the model.

    - ``run(batch)``: synchronous forward pass, ``(N, 3, H, W)`` float32 -> ``(N, C)`` logits.
    - ``await infer(batch, cancellation)``: the same on the inference thread, in chunks of
      ``max_batch_size``; a cancelled ``cancellation`` stops it before its next chunk with
      ``Cancelled``. For interactive callers on the event loop.
    - ``run_on_inference_thread(batch, cancellation)``: ``infer`` for a worker thread, blocking
      (the explainers' forward function: their batches queue with ``/predict``'s, a job's
      behind every interactive one: ``priority_of(cancellation)``).
    - ``run_soon(batch, cancellation)``: one chunk queued on the inference thread, returning
      a future at once (a prediction that runs while the caller works on something else).
    - ``await submit(x, cancellation)``: one ``(3, H, W)`` input through the dynamic batcher ->
      ``(C,)`` logits, followed by the ``(D,)`` embedding when the graph has an ``embedding``
      output (the open-set score reads it; ``split_row`` separates the two);
      ``Cancelled`` (the input leaves the queue) once ``cancellation`` is.
    """

    has_embedding = False  # the graph also outputs ``embedding`` (set from the session)

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        max_batch_size: int,
        batch_timeout_s: float,
        observer: BatchObserver | None = None,
    ) -> None:
        self.session = session
        self.provider: str = session.get_providers()[0]
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        names = [output.name for output in session.get_outputs()]
        self.has_embedding = EMBEDDING_OUTPUT in names[1:]
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self._observer = observer
        self._executor: InferenceThread | None = None
        self.batcher: DynamicBatcher | None = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run([self.output_name], {self.input_name: batch})
        return logits

    def run_rows(self, batch: np.ndarray) -> np.ndarray:
        """``run`` with the embedding (when there is one) appended to each row of logits."""
        if not self.has_embedding:
            return self.run(batch)
        names = [self.output_name, EMBEDDING_OUTPUT]
        return np.concatenate(self.session.run(names, {self.input_name: batch}), axis=1)

    def split_row(self, row: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray | None]:
        """A ``submit`` row -> (logits, embedding or None)."""
        return row[:classes], (row[classes:] if self.has_embedding else None)

    def warm_up(self, example: np.ndarray) -> float:
        """Run batches of 1 and ``max_batch_size`` copies of ``example`` once; returns seconds."""
        started = time.perf_counter()
        for size in sorted({1, self.max_batch_size}):
            self.run_rows(np.repeat(example[None], size, axis=0))
        return time.perf_counter() - started

    async def infer(
        self, batch: np.ndarray, cancellation: Cancellation | None = None
    ) -> np.ndarray:
        if len(batch) == 0:
            raise ValueError("infer() needs at least one input")
        executor = self._running_executor()
        loop = asyncio.get_running_loop()
        cancellation = cancellation or Cancellation()
        # checked again on the inference thread when the chunk's turn comes
        run = partial(self._run_chunk, cancellation)
        outputs = []
        for start in range(0, len(batch), self.max_batch_size):
            chunk = batch[start : start + self.max_batch_size]
            cancellation.batch()
            outputs.append(await loop.run_in_executor(executor, run, chunk))
        return np.concatenate(outputs)

    def run_on_inference_thread(
        self, batch: np.ndarray, cancellation: Cancellation | None = None, rows: bool = False
    ) -> np.ndarray:
        """``infer`` for code on a worker thread (an explainer's forward function): blocks
        until the chunks have run on the inference thread, with no event loop in between.
        ``rows``: the embedding appended to each row (``run_rows``). Never call it from the
        inference thread itself: it would wait for itself."""
        if len(batch) == 0:
            raise ValueError("run_on_inference_thread() needs at least one input")
        # one chunk at a time, as ``infer``: /predict batches queue between them
        outputs = [
            self._chunk_soon(
                batch[start : start + self.max_batch_size], cancellation, rows
            ).result()
            for start in range(0, len(batch), self.max_batch_size)
        ]
        return np.concatenate(outputs)

    def run_soon(
        self, batch: np.ndarray, cancellation: Cancellation | None = None
    ) -> Future[np.ndarray]:
        """Queue one chunk (at most ``max_batch_size`` inputs) on the inference thread and
        return at once: a worker thread starts the prediction it needs, does its own work
        meanwhile (an explainer's pass of the twin), then reads the future."""
        if not 0 < len(batch) <= self.max_batch_size:
            raise ValueError(f"run_soon() takes 1 to {self.max_batch_size} inputs: {len(batch)}")
        return self._chunk_soon(batch, cancellation)

    def _chunk_soon(
        self, chunk: np.ndarray, cancellation: Cancellation | None, rows: bool = False
    ) -> Future[np.ndarray]:
        """``cancellation.batch()`` here, on the asking thread (a job may wait there to give
        its turn away); the chunk queued at the work's priority, traced as ``explanation
        batch`` in the asking thread's trace."""
        executor = self._running_executor()
        cancellation = cancellation or Cancellation()
        cancellation.batch()
        run = partial(self._run_chunk, cancellation, rows=rows)
        parent, queued = tracing.current_context(), time.perf_counter()
        future = executor.submit_at(priority_of(cancellation), run, chunk)
        if parent is not None:
            future.add_done_callback(partial(trace_chunk, parent, queued, len(chunk)))
        return future

    def _run_chunk(
        self, cancellation: Cancellation, chunk: np.ndarray, rows: bool = False
    ) -> np.ndarray:
        cancellation.check()  # gone while the chunk queued: run nothing
        return self.run_rows(chunk) if rows else self.run(chunk)

    async def submit(
        self, item: np.ndarray, cancellation: Cancellation | None = None
    ) -> tuple[np.ndarray, BatchStats]:
        if self.batcher is None:
            raise RuntimeError("engine is not started")
        if cancellation is None:
            return await self.batcher.submit(item)
        return await cancellation.guard(self.batcher.submit(item))

    def start(self, admitted: Admitted | None = None) -> None:
        """Start the inference thread and the batcher (from the serving event loop);
        ``admitted``: see ``DynamicBatcher``."""
        if self._executor is not None:
            raise RuntimeError("engine already started")
        self._executor = InferenceThread()
        self.batcher = DynamicBatcher(
            self.run_rows,
            self._executor,
            max_batch_size=self.max_batch_size,
            timeout_s=self.batch_timeout_s,
            observer=self._observer,
            admitted=admitted,
        )
        self.batcher.start()

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
            self.batcher = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _running_executor(self) -> InferenceThread:
        if self._executor is None:
            raise RuntimeError("engine is not started")
        return self._executor
