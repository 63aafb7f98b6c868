"""Where each route's work runs when the service is scaled out (``python -m service --ray``).

Explanations cost 10 to 100 times a prediction, so on Ray they run in replicas of their own
(``Explain``), scaled apart from ``/predict``'s (``Predict``); everything cheap (the page, docs,
health, ``/model``, reading jobs) is answered by the gateway's own in-process app (``Gateway``).
Every route says which, where it is declared: ``ON_PREDICT``, ``ON_EXPLAIN`` or ``ON_GATEWAY``
among its ``dependencies``; a router whose routes all stay on the gateway says it once, in its
own ``dependencies``. A route declares exactly one.

The marker is a dependency that does nothing, so in one process it changes nothing, and it
adds nothing to the OpenAPI document. ``service.scaleout.routing`` reads it from the app's
routes to send each request where its route runs; ``tests/scaleout/test_routing.py`` checks
that every route declares one, and which.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends

PREDICT = "Predict"
EXPLAIN = "Explain"
GATEWAY = "Gateway"


class RunsOn:
    """The marker dependency: called with each request, it does nothing."""

    def __init__(self, placement: str) -> None:
        self.placement = placement

    async def __call__(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"RunsOn({self.placement!r})"


ON_PREDICT = Depends(RunsOn(PREDICT))
ON_EXPLAIN = Depends(RunsOn(EXPLAIN))
ON_GATEWAY = Depends(RunsOn(GATEWAY))


def placement_of(route: Any) -> str | None:
    """The placement a route declares in its dependencies (its router's included), or None
    when it declares none; ValueError when it declares two."""
    found = {
        depends.dependency.placement
        for depends in getattr(route, "dependencies", None) or ()
        if isinstance(depends.dependency, RunsOn)
    }
    if len(found) > 1:
        name = getattr(route, "name", "?")
        raise ValueError(f"route {name} declares several placements: {', '.join(sorted(found))}")
    return found.pop() if found else None
