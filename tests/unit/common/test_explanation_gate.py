"""The explanation gate: at most N running, M waiting, the rest refused at once."""

from __future__ import annotations

import asyncio

import pytest

from service.api.deps import explanation_slot
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
