"""A replica's side of ``/metrics``: its app's registry sent to the ``MetricsBoard`` every few
seconds, and withdrawn when the replica stops (see ``metrics_merge``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from service.scaleout.metrics_merge import PUBLISH_EVERY_S

log = logging.getLogger(__name__)


class MetricsPublisher:
    def __init__(
        self,
        replica: str,
        render: Callable[[], str],
        publish: Callable[[str, str], Awaitable[object]],
        withdraw: Callable[[str], Awaitable[object]],
    ) -> None:
        self.replica = replica
        self.render = render
        self._publish = publish
        self._withdraw = withdraw
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):  # the board may be gone first (app shutdown)
            async with asyncio.timeout(PUBLISH_EVERY_S):
                await self._withdraw(self.replica)

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(PUBLISH_EVERY_S):
                    await self._publish(self.replica, self.render())
            except Exception as exc:  # the board restarts: publish again next time
                log.debug("metrics not published: %r", exc)
            await asyncio.sleep(PUBLISH_EVERY_S)
