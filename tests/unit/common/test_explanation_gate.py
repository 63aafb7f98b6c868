"""The explanation gate: at most N running, M waiting, the rest refused at once; synchronous
explanations before jobs, and a running job gives its turn away at its next batch."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from service.api.deps import explanation_slot
from service.common.admission import BackgroundWork, ExplanationGate, Priority
from service.common.cancellation import Cancellation, Cancelled
from service.errors import Overloaded
from service.settings import Settings
from service.state import ServiceState


def test_gate_runs_n_queues_m_and_refuses_the_rest():
    state = ServiceState(Settings(_env_file=None, max_explanations=2, explanation_queue=1))
    running, refused = [], []
    release = asyncio.Event()

    async def request(index: int) -> None:
        slot = explanation_slot(state, Cancellation())
        try:
            await slot.__anext__()
        except Overloaded as error:
            refused.append((index, error.headers))
            return
        running.append(index)
        await release.wait()
        with pytest.raises(StopAsyncIteration):
            await slot.__anext__()

    async def scenario() -> None:
        tasks = [asyncio.create_task(request(i)) for i in range(5)]
        await asyncio.sleep(0.05)
        assert running == [0, 1]  # two run, the third waits for a turn
        assert [i for i, _ in refused] == [3, 4] and refused[0][1] == {"Retry-After": "2"}
        release.set()
        await asyncio.gather(*tasks)
        assert running == [0, 1, 2]  # the waiting one ran once a turn was free
        assert state.explanations.admitted.active == 0

    asyncio.run(scenario())


def test_a_waiting_request_whose_client_left_gives_up_its_place():
    state = ServiceState(Settings(_env_file=None, max_explanations=1, explanation_queue=2))
    order: list[str] = []

    async def scenario() -> None:
        running = explanation_slot(state, Cancellation())
        await running.__anext__()  # holds the one turn
        gone, kept = Cancellation(), Cancellation()
        waiting_gone = explanation_slot(state, gone)
        waiting_kept = explanation_slot(state, kept)

        async def wait(slot, name: str) -> None:
            try:
                await slot.__anext__()
            except Cancelled:
                order.append(f"{name} left")
                return
            order.append(f"{name} runs")
            with pytest.raises(StopAsyncIteration):
                await slot.__anext__()

        tasks = [
            asyncio.create_task(wait(waiting_gone, "gone")),
            asyncio.create_task(wait(waiting_kept, "kept")),
        ]
        await asyncio.sleep(0.01)
        assert state.explanations.admitted.active == 3
        gone.cancel("client hung up")
        await asyncio.sleep(0.01)
        assert order == ["gone left"]  # at once, while the turn is still taken
        assert state.explanations.admitted.active == 2
        with pytest.raises(StopAsyncIteration):
            await running.__anext__()  # the running one finishes: the turn passes on
        await asyncio.gather(*tasks)
        assert order == ["gone left", "kept runs"]
        assert state.explanations.admitted.active == 0

    asyncio.run(scenario())


def test_a_waiting_synchronous_explanation_goes_before_queued_jobs():
    gate = ExplanationGate(concurrent=1, queue=4)
    order: list[str] = []

    async def take(priority: Priority, name: str) -> None:
        await gate.take(priority)
        order.append(name)

    async def scenario() -> None:
        await gate.take(Priority.BACKGROUND)  # a job runs
        queued = [
            asyncio.create_task(take(Priority.BACKGROUND, "job 2")),
            asyncio.create_task(take(Priority.BACKGROUND, "job 3")),
        ]
        await asyncio.sleep(0.01)
        interactive = asyncio.create_task(take(Priority.INTERACTIVE, "sync"))
        await asyncio.sleep(0.01)
        assert gate.interactive_waiting == 1 and gate.background_waiting == 2
        for _ in range(3):
            gate.release()
            await asyncio.sleep(0.01)
        await asyncio.gather(interactive, *queued)
        assert order == ["sync", "job 2", "job 3"]
        gate.release()
        assert gate.taken == 0

    asyncio.run(scenario())


def test_a_running_job_gives_its_turn_away_at_its_next_batch_and_takes_it_back_first():
    """The job's ``batch()`` (its work thread, before a pass) blocks while the synchronous
    explanation runs, then the job goes on ahead of the job queued meanwhile."""
    gate = ExplanationGate(concurrent=1, queue=1)
    order: list[str] = []

    async def scenario() -> None:
        job = BackgroundWork(gate, on_batch=lambda: order.append("job pass"))
        await job.take_turn()
        job.batch()  # nobody waits: the pass goes on, on the loop or not
        queued = BackgroundWork(gate)
        queued_turn = asyncio.create_task(queued.take_turn())

        async def synchronous() -> None:
            await gate.take(Priority.INTERACTIVE)
            order.append("sync runs")
            await asyncio.sleep(0.05)  # the job's thread stays blocked meanwhile
            order.append("sync done")
            gate.release()

        sync = asyncio.create_task(synchronous())
        await asyncio.sleep(0.01)
        assert order == ["job pass"] and gate.interactive_waiting == 1
        await asyncio.to_thread(job.batch)  # the job's next pass, from its work thread
        await sync
        assert order == ["job pass", "sync runs", "sync done", "job pass"]
        assert job.holding and job.gave_way == 1 and not queued_turn.done()
        job.release_turn()
        await queued_turn
        assert queued.holding
        queued.release_turn()
        assert gate.taken == 0

    asyncio.run(scenario())


def test_a_job_cancelled_while_it_gave_way_holds_no_turn():
    gate = ExplanationGate(concurrent=1, queue=1)

    async def scenario() -> None:
        job = BackgroundWork(gate)
        await job.take_turn()
        await_sync = asyncio.create_task(gate.take(Priority.INTERACTIVE))
        await asyncio.sleep(0.01)
        giving_way = asyncio.create_task(asyncio.to_thread(job.batch))
        await await_sync  # the job gave its turn to it
        job.cancel("the job was deleted")
        with pytest.raises(Cancelled, match="deleted"):
            await giving_way
        assert not job.holding
        job.release_turn()  # what the runner's finally does: nothing to give back
        assert gate.taken == 1  # the synchronous explanation's
        gate.release()
        assert gate.taken == 0 and gate.background_waiting == 0

    asyncio.run(scenario())


def test_a_waiter_cancelled_as_the_turn_comes_back_raises_cancelled_and_holds_nothing():
    """Its task is cancelled (its client left) and, before that task runs again, the holder
    gives the turn back: the release passes the cancelled waiter over, and the waiter then
    leaves with ``CancelledError``, never an error of the gate's own (once a ``ValueError``
    that the service answered as 500 instead of 499)."""
    gate = ExplanationGate(concurrent=1, queue=1)

    async def scenario() -> None:
        await gate.take(Priority.INTERACTIVE)  # held
        waiter = asyncio.create_task(gate.take(Priority.INTERACTIVE))
        await asyncio.sleep(0)  # in line
        assert gate.interactive_waiting == 1
        waiter.cancel()
        gate.release()  # in the same turn of the loop, before the waiter's task runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.taken == 0 and gate.interactive_waiting == 0
        await asyncio.wait_for(gate.take(Priority.INTERACTIVE), 1.0)  # the turn is free
        assert gate.taken == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("steps", range(6))
def test_clients_leaving_at_once_all_end_cancelled_whatever_the_interleaving(steps: int):
    """One request runs, two wait; all three clients leave at once, and the running one gives
    its turn back ``steps`` turns of the loop later (the service's hang-ups land in any order):
    every request ends in ``Cancelled`` (499), and the gate ends empty."""
    state = ServiceState(Settings(_env_file=None, max_explanations=1, explanation_queue=2))
    ended: list[str] = []

    async def wait(slot, name: str) -> None:
        try:
            await slot.__anext__()
        except Cancelled:
            ended.append(f"{name} cancelled")
        else:
            ended.append(f"{name} ran")

    async def scenario() -> None:
        running_client = Cancellation()
        running = explanation_slot(state, running_client)
        await running.__anext__()  # holds the one turn
        clients = [Cancellation(), Cancellation()]
        tasks = [
            asyncio.create_task(wait(explanation_slot(state, client), f"waiting {i}"))
            for i, client in enumerate(clients)
        ]
        await asyncio.sleep(0.01)
        assert state.explanations.interactive_waiting == 2
        for client in [running_client, *clients]:
            client.cancel("the client closed the connection")
        for _ in range(steps):
            await asyncio.sleep(0)
        with pytest.raises(StopAsyncIteration):
            await running.__anext__()  # the running request stops and gives its turn back
        await asyncio.gather(*tasks)  # a gate error would surface here
        assert sorted(ended) == ["waiting 0 cancelled", "waiting 1 cancelled"]
        gate = state.explanations
        assert gate.taken == 0 and gate.interactive_waiting == 0
        assert gate.admitted.active == 0

    asyncio.run(scenario())


def test_a_running_job_keeps_its_turn_when_the_only_waiter_has_just_left():
    """The one synchronous waiter's client leaves, and before its task has left the line the
    running job comes to its next batch: nobody waits any more, so the job keeps its turn
    instead of handing it to the job queued behind it (and then waiting behind that one)."""
    gate = ExplanationGate(concurrent=1, queue=4)

    async def scenario() -> None:
        running, queued = BackgroundWork(gate), BackgroundWork(gate)
        await running.take_turn()
        queued_turn = asyncio.create_task(queued.take_turn())
        waiter = asyncio.create_task(gate.take(Priority.INTERACTIVE))
        await asyncio.sleep(0.01)
        assert gate.interactive_waiting == 1 and gate.background_waiting == 1
        waiter.cancel()  # its turn is cancelled now; its task leaves the line when it next runs
        assert gate.interactive_waiting == 0
        await running._give_way()  # what the job's next batch does, in the same turn
        assert running.holding and running.gave_way == 0
        assert not queued.holding
        with pytest.raises(asyncio.CancelledError):
            await waiter
        running.release_turn()
        await asyncio.wait_for(queued_turn, 1.0)
        assert queued.holding

    asyncio.run(scenario())


def test_a_jobs_thread_reads_the_waiting_count_while_the_loop_changes_the_lines():
    """A job's work thread asks ``interactive_waiting`` before each batch while the event loop
    queues and drops waiters: the count never raises (iterating a line while the loop changed
    it raised ``RuntimeError``, and the job failed with ``internal_error``). Fixed work on both
    sides; the interpreter switches threads often meanwhile, to give the race every chance."""
    gate = ExplanationGate(concurrent=1, queue=64)
    errors: list[BaseException] = []
    done = threading.Event()

    def job_thread() -> None:
        while not done.is_set():
            try:
                assert 0 <= gate.interactive_waiting <= 20
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)
                return

    async def scenario() -> None:
        await gate.take(Priority.BACKGROUND)  # the job holds the one turn
        reader = threading.Thread(target=job_thread)
        reader.start()
        try:
            for _ in range(300):  # clients arriving and hanging up
                waiters = [asyncio.create_task(gate.take(Priority.INTERACTIVE)) for _ in range(20)]
                await asyncio.sleep(0)
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
        finally:
            done.set()
            reader.join()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        asyncio.run(scenario())
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert gate.interactive_waiting == 0
