"""The explanation gate: at most N running, M waiting, the rest refused at once."""
from __future__ import annotations

import asyncio

import pytest

from service.deps import explanation_slot
from service.errors import Overloaded
from service.settings import Settings
from service.state import ServiceState


def test_gate_runs_n_queues_m_and_refuses_the_rest():
    state = ServiceState(Settings(_env_file=None, max_explanations=2, explanation_queue=1))
    running, refused = [], []
    release = asyncio.Event()

    async def request(index: int) -> None:
        slot = explanation_slot(state)
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
