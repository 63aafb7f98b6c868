"""Every dependency of every route runs on the event loop: FastAPI sends a plain ``def``
dependency to a worker thread, a hop that cost more than the work of any of ours (the
dependencies that do real work, decoding and face search, hop themselves, once)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service.app import create_app
from service.scaleout.routing import flat_routes
from service.settings import Settings


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def _runs_on_loop(call: Any) -> bool:
    function = call if inspect.isroutine(call) else type(call).__call__
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def test_no_route_dependency_hops_to_a_thread(default_bundle: Path) -> None:
    app = create_app(Settings(_env_file=None, model=default_bundle, access_log=False))
    routes = [
        route
        for route in flat_routes(app.routes)
        if isinstance(getattr(route, "original_route", route), APIRoute)
    ]
    assert len(routes) > 30  # the whole API, not an empty app
    hopping = {
        f"{route.path}: {getattr(call, '__qualname__', type(call).__qualname__)}"
        for route in routes
        for call in _calls(route.dependant)
        if not _runs_on_loop(call)
    }
    assert not hopping, f"plain def dependencies (each a worker-thread hop): {sorted(hopping)}"
