from __future__ import annotations

import asyncio
import operator
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.common.admission import BackgroundWork, ExplanationGate, Priority
from service.common.cancellation import Cancellation, Cancelled
from service.inference.engine import (
    CPU,
    CUDA,
    DynamicBatcher,
    Engine,
    EngineError,
    InferenceThread,
    choose_providers,
    create_session,
)


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        ("auto", [CPU], [CPU]),
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("cpu", [CUDA, CPU], [CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
    ],
)
def test_choose_providers(requested, available, expected):
    assert choose_providers(requested, available) == expected


def test_cuda_without_cuda_fails_loudly():
    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        choose_providers("cuda", [CPU])


def test_unknown_provider_lists_the_valid_ones():
    with pytest.raises(EngineError, match="auto, cpu, cuda"):
        choose_providers("tpu", [CPU])


class RecordingModel:
    """A stand-in model: doubles its input and records each batch size."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batch_sizes: list[int] = []
        self.delay_s = delay_s
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batch_sizes.append(len(batch))
        if self.fail:
            raise RuntimeError("model exploded")
        threading.Event().wait(self.delay_s)
        return batch * 2


async def _run(model, inputs, *, max_batch_size, timeout_s, observed=None, admitted=None):
    with ThreadPoolExecutor(max_workers=1) as executor:
        batcher = DynamicBatcher(
            model,
            executor,
            max_batch_size=max_batch_size,
            timeout_s=timeout_s,
            observer=None if observed is None else lambda *args: observed.append(args),
            admitted=admitted,
        )
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(x) for x in inputs), return_exceptions=True
            )
        finally:
            await batcher.stop()


def test_concurrent_submissions_share_batches_and_get_their_own_rows():
    model = RecordingModel(delay_s=0.01)
    inputs = [np.full(3, i, dtype=np.float32) for i in range(20)]
    observed: list[tuple] = []

    results = asyncio.run(_run(model, inputs, max_batch_size=8, timeout_s=0.05, observed=observed))

    for i, (row, stats) in enumerate(results):
        np.testing.assert_array_equal(row, np.full(3, 2 * i))
        assert 1 <= stats.batch_size <= 8
        assert stats.queue_ms >= 0 and stats.inference_ms >= 0
    assert max(model.batch_sizes) == 8
    assert sum(model.batch_sizes) == 20
    assert [size for size, _, _ in observed] == model.batch_sizes


def test_zero_timeout_still_batches_what_is_already_queued():
    model = RecordingModel(delay_s=0.02)
    inputs = [np.zeros(2, dtype=np.float32) for _ in range(10)]

    asyncio.run(_run(model, inputs, max_batch_size=4, timeout_s=0.0))

    # no waiting for more, but whatever is queued when a batch starts goes in, up to the max
    assert model.batch_sizes == [4, 4, 2]


def test_a_lone_request_waits_at_most_the_timeout():
    model = RecordingModel()

    ((row, stats),) = asyncio.run(
        _run(model, [np.ones(2, dtype=np.float32)], max_batch_size=8, timeout_s=0.02)
    )

    assert stats.batch_size == 1
    assert 15 <= stats.queue_ms < 500


def test_a_lone_request_in_progress_runs_without_waiting_for_company():
    model = RecordingModel()

    # a minute's timeout: the batch holds every admitted request, so it does not wait
    ((row, stats),) = asyncio.run(
        _run(
            model,
            [np.ones(2, dtype=np.float32)],
            max_batch_size=8,
            timeout_s=60,
            admitted=lambda: 1,
        )
    )

    np.testing.assert_array_equal(row, np.full(2, 2.0))
    assert stats.batch_size == 1
    assert stats.queue_ms < 30_000


def test_a_batch_waits_for_admitted_requests_still_on_their_way():
    """Three requests in progress, the last two reaching the batcher later (still decoding):
    the first waits for them, and the three run as one batch, at once when the third is in."""
    model = RecordingModel()

    async def scenario():
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = DynamicBatcher(
                model, executor, max_batch_size=8, timeout_s=60, admitted=lambda: 3
            )
            batcher.start()
            try:
                first = asyncio.ensure_future(batcher.submit(np.zeros(2, dtype=np.float32)))
                for _ in range(20):  # the first is collected and waiting before the others come
                    await asyncio.sleep(0)
                assert not first.done()
                later = [batcher.submit(np.ones(2, dtype=np.float32)) for _ in range(2)]
                return await asyncio.wait_for(asyncio.gather(first, *later), 30)
            finally:
                await batcher.stop()

    results = asyncio.run(scenario())

    assert model.batch_sizes == [3]
    assert [stats.batch_size for _, stats in results] == [3, 3, 3]


def test_a_failing_batch_fails_each_caller_and_the_batcher_goes_on():
    async def scenario():
        model = RecordingModel(fail=True)
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = DynamicBatcher(model, executor, max_batch_size=4, timeout_s=0.01)
            batcher.start()
            first = await asyncio.gather(
                *(batcher.submit(np.zeros(1)) for _ in range(3)), return_exceptions=True
            )
            model.fail = False
            second = await batcher.submit(np.ones(1))
            await batcher.stop()
        return first, second

    first, (row, _) = asyncio.run(scenario())

    assert all(isinstance(result, RuntimeError) for result in first)
    np.testing.assert_array_equal(row, [2.0])


def test_cancelled_callers_are_dropped_from_the_batch():
    async def scenario():
        model = RecordingModel(delay_s=0.05)
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = DynamicBatcher(model, executor, max_batch_size=8, timeout_s=0.0)
            batcher.start()
            busy = asyncio.ensure_future(batcher.submit(np.zeros(1)))  # occupies the model
            await asyncio.sleep(0.01)
            gone = asyncio.ensure_future(batcher.submit(np.zeros(1)))
            kept = asyncio.ensure_future(batcher.submit(np.ones(1)))
            await asyncio.sleep(0)
            gone.cancel()
            await busy
            row, stats = await kept
            await batcher.stop()
        return model.batch_sizes, stats

    batch_sizes, stats = asyncio.run(scenario())

    assert batch_sizes == [1, 1]
    assert stats.batch_size == 1


def test_submit_before_start_is_an_error():
    batcher = DynamicBatcher(RecordingModel(), ThreadPoolExecutor(1), max_batch_size=2, timeout_s=0)

    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(batcher.submit(np.zeros(1)))


def test_invalid_batch_size():
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(RecordingModel(), ThreadPoolExecutor(1), max_batch_size=0, timeout_s=0)


@pytest.fixture(scope="module")
def session(default_bundle):
    return create_session(default_bundle / "model.onnx", "cpu", threads=2)


def test_engine_infer_chunks_like_one_run_and_close_releases_everything(session):
    async def scenario():
        engine = Engine(session, max_batch_size=4, batch_timeout_s=0.001)
        engine.start()
        try:
            batch = np.random.default_rng(0).normal(size=(10, 3, 150, 150)).astype(np.float32)
            chunked = await engine.infer(batch)
            row, stats = await engine.submit(batch[3])
        finally:
            await engine.close()
        return engine, batch, chunked, row, stats

    engine, batch, chunked, row, stats = asyncio.run(scenario())

    np.testing.assert_allclose(chunked, engine.run(batch), atol=1e-5)
    logits, embedding = engine.split_row(row, chunked.shape[1])
    np.testing.assert_allclose(logits, chunked[3], atol=1e-5)
    assert engine.has_embedding and embedding is not None and embedding.shape == (128,)
    assert stats.batch_size == 1
    assert engine.batcher is None
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(engine.infer(batch))


class EngineOnModel(Engine):
    """The engine with a stand-in model instead of an ONNX session (``run`` is its one use)."""

    def __init__(self, model: RecordingModel, max_batch_size: int, timeout_s: float) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = timeout_s
        self._observer = None
        self._executor = None
        self.batcher = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.model(batch)


def test_infer_stops_before_the_next_chunk_once_cancelled():
    model = RecordingModel()
    passes: list[int] = []

    def hang_up_before_the_second_pass() -> None:
        passes.append(len(passes))
        if len(passes) == 2:
            cancellation.cancel("client hung up")

    cancellation = Cancellation(on_batch=hang_up_before_the_second_pass)

    async def scenario():
        engine = EngineOnModel(model, max_batch_size=4, timeout_s=0.001)
        engine.start()
        try:
            await engine.infer(np.zeros((16, 2), dtype=np.float32), cancellation)
        finally:
            await engine.close()

    with pytest.raises(Cancelled, match="client hung up"):
        asyncio.run(scenario())

    # the chunk that ran before it was cancelled finished; the next three never start
    assert model.batch_sizes == [4]
    assert passes == [0, 1]


def test_run_on_inference_thread_chunks_on_that_thread_and_stops_once_cancelled():
    """The blocking form explainers use from a worker thread: the same chunks as ``infer``, run
    on the inference thread, and none after the client hung up. ``batch()`` runs on the asking
    thread (where a job may wait to give its turn away), never on the inference thread."""
    model = RecordingModel()
    threads: list[str] = []
    passes: list[int] = []

    def on_batch() -> None:
        threads.append(threading.current_thread().name)
        passes.append(len(passes))
        if len(passes) == 2:
            cancellation.cancel("client hung up")

    cancellation = Cancellation(on_batch=on_batch)

    async def scenario():
        engine = EngineOnModel(model, max_batch_size=4, timeout_s=0.001)
        engine.start()
        try:
            full = await asyncio.to_thread(
                engine.run_on_inference_thread, np.ones((10, 2), dtype=np.float32)
            )
            with pytest.raises(Cancelled, match="client hung up"):
                zeros = np.zeros((16, 2), dtype=np.float32)
                await asyncio.to_thread(engine.run_on_inference_thread, zeros, cancellation)
        finally:
            await engine.close()
        return full

    full = asyncio.run(scenario())

    assert len(full) == 10
    # 10 rows in chunks of 4, then the cancelled run: its first chunk ran, no second starts
    assert model.batch_sizes == [4, 4, 2, 4]
    assert passes == [0, 1] and not any(name.startswith("inference") for name in threads)


def test_run_soon_returns_at_once_and_runs_on_the_inference_thread():
    """The prediction an explainer overlaps with its twin pass: queued behind the work already
    on the inference thread, its future read later; a batch past one chunk is refused."""
    model = RecordingModel(delay_s=0.1)
    threads: list[str] = []
    cancellation = Cancellation(on_batch=lambda: threads.append(threading.current_thread().name))

    async def scenario():
        engine = EngineOnModel(model, max_batch_size=4, timeout_s=0.001)
        engine.start()
        try:
            busy = asyncio.ensure_future(engine.infer(np.zeros((4, 2), dtype=np.float32)))
            await asyncio.sleep(0.02)  # the busy chunk holds the inference thread
            future = engine.run_soon(np.ones((1, 2), dtype=np.float32), cancellation)
            pending = not future.done()
            await busy
            row = await asyncio.wrap_future(future)
            with pytest.raises(ValueError, match="1 to 4 inputs"):
                engine.run_soon(np.ones((5, 2), dtype=np.float32))
        finally:
            await engine.close()
        return pending, row

    pending, row = asyncio.run(scenario())

    assert pending  # it returned while the busy chunk was still running
    np.testing.assert_array_equal(row, [[2.0, 2.0]])
    assert model.batch_sizes == [4, 1]
    assert threads == [threading.main_thread().name]  # counted where it was asked for


def test_a_chunk_queued_behind_other_work_is_dropped_when_its_turn_comes():
    model = RecordingModel(delay_s=0.1)

    async def scenario():
        engine = EngineOnModel(model, max_batch_size=8, timeout_s=0.001)
        engine.start()
        try:
            busy = asyncio.ensure_future(engine.infer(np.zeros((8, 2), dtype=np.float32)))
            await asyncio.sleep(0.02)  # the busy chunk holds the inference thread
            cancellation = Cancellation()
            queued = asyncio.ensure_future(
                engine.infer(np.ones((8, 2), dtype=np.float32), cancellation)
            )
            await asyncio.sleep(0.01)
            cancellation.cancel("client hung up")
            await busy
            with pytest.raises(Cancelled):
                await queued
        finally:
            await engine.close()

    asyncio.run(scenario())

    assert model.batch_sizes == [8]  # the queued chunk never reached the model


def test_a_submission_whose_client_left_leaves_the_batcher_queue():
    model = RecordingModel(delay_s=0.05)

    async def scenario():
        engine = EngineOnModel(model, max_batch_size=8, timeout_s=0.0)
        engine.start()
        try:
            busy = asyncio.ensure_future(engine.submit(np.zeros(1, dtype=np.float32)))
            await asyncio.sleep(0.01)  # a batch of one is running
            cancellation = Cancellation()
            gone = asyncio.ensure_future(engine.submit(np.ones(1, dtype=np.float32), cancellation))
            kept = asyncio.ensure_future(engine.submit(np.full(1, 2, dtype=np.float32)))
            await asyncio.sleep(0)
            cancellation.cancel("client hung up")
            with pytest.raises(Cancelled):
                await gone
            await busy
            row, _ = await kept
        finally:
            await engine.close()
        return row

    row = asyncio.run(scenario())

    np.testing.assert_array_equal(row, [4.0])
    assert model.batch_sizes == [1, 1]  # the second batch holds only the one still wanted


def test_interactive_chunks_run_before_queued_job_chunks():
    """A job's chunks (``BackgroundWork``) queue behind interactive ones on the inference
    thread: a /predict batch or a synchronous explanation waits at most the one job chunk
    already running, not every job chunk queued before it."""
    model = RecordingModel(delay_s=0.05)
    gate = ExplanationGate(concurrent=4, queue=0)
    order: list[str] = []

    def run_marked(batch: np.ndarray) -> np.ndarray:
        order.append("job" if batch[0, 0] == 1 else "interactive")
        return model(batch)

    async def scenario():
        engine = EngineOnModel(model, max_batch_size=4, timeout_s=0.001)
        engine.run = run_marked  # type: ignore[method-assign]
        engine.start()
        try:
            jobs = [engine.run_soon(np.ones((4, 2), dtype=np.float32), BackgroundWork(gate))]
            await asyncio.sleep(0.01)  # the first job chunk is running
            jobs += [
                engine.run_soon(np.ones((4, 2), dtype=np.float32), BackgroundWork(gate))
                for _ in range(3)
            ]
            predicted = await engine.infer(np.zeros((2, 2), dtype=np.float32))
            for future in jobs:
                await asyncio.wrap_future(future)
        finally:
            await engine.close()
        return predicted

    assert len(asyncio.run(scenario())) == 2
    assert order == ["job", "interactive", "job", "job", "job"]


def test_inference_thread_orders_by_priority_then_arrival_and_drains_on_shutdown():
    thread = InferenceThread(name="inference-test")
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> None:
        started.set()
        release.wait(5)

    thread.submit(hold)
    assert started.wait(5)
    futures = [
        thread.submit_at(Priority.BACKGROUND, ran.append, "job 1"),
        thread.submit(ran.append, "interactive 1"),
        thread.submit_at(Priority.BACKGROUND, ran.append, "job 2"),
        thread.submit_at(Priority.INTERACTIVE, ran.append, "interactive 2"),
    ]
    failing = thread.submit(operator.truediv, 1, 0)
    assert thread.queued == 5
    release.set()
    thread.shutdown(wait=True)  # what was queued still runs
    assert ran == ["interactive 1", "interactive 2", "job 1", "job 2"]
    assert all(future.done() for future in futures)
    with pytest.raises(ZeroDivisionError):
        failing.result()
    with pytest.raises(RuntimeError, match="shut down"):
        thread.submit(ran.append, "late")


def test_stop_ends_the_batcher_when_an_input_arrives_in_the_same_turn():
    """An input arrives as the engine closes (``stop``), while the batcher waits for company
    for its first one: ``stop`` returns, and both callers end cancelled, none left waiting
    (``asyncio.wait_for`` on Python 3.11 handed the batcher the input and dropped the
    cancellation: ``stop`` waited for ever)."""

    async def scenario() -> None:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = DynamicBatcher(
                RecordingModel(), executor, max_batch_size=8, timeout_s=30.0, admitted=lambda: 8
            )
            batcher.start()
            first = asyncio.create_task(batcher.submit(np.ones(3, np.float32)))
            for _ in range(5):
                await asyncio.sleep(0)  # the batcher holds it and waits for more
            second = asyncio.create_task(batcher.submit(np.ones(3, np.float32)))
            stopping = asyncio.create_task(batcher.stop())
            done, _ = await asyncio.wait({stopping}, timeout=5.0)
            assert done, "stop() went on waiting"
            callers, _ = await asyncio.wait({first, second}, timeout=5.0)
            assert callers == {first, second}
            assert first.cancelled() and second.cancelled()

    asyncio.run(scenario())
