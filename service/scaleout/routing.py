"""Which deployment serves a request: the placement its route declares.

Every route of the app says where its work runs (``service.api.placement``): in a replica of
``Predict``, of ``Explain``, or in the gateway's own in-process app. ``Routing`` reads those
declarations from the app's routes, in the order the app matches them, and finds a request's
route as the app does (method and path, ``HEAD`` as ``GET``, a trailing slash tried without),
so a new route goes where it says with no list to keep here. A request whose method its route
does not take (405), a path no route takes (404), the static files and the OpenAPI document
are answered by the gateway's app, as by the single-process service. An API route that
declares no placement stays on the gateway too (the gateway logs it; the routing tests fail).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from service.api.placement import EXPLAIN, GATEWAY, PREDICT, placement_of

DEPLOYMENTS = (PREDICT, EXPLAIN)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacedRoute:
    """One route of the app, flattened out of its routers."""

    name: str
    path: str  # its template, as the app's metrics label it: /explain/{method}
    regex: re.Pattern[str]
    methods: frozenset[str] | None  # None: every method (a mount)
    api: bool  # a FastAPI route (not a mount or FastAPI's own /openapi.json)
    placement: str | None  # PREDICT, EXPLAIN, GATEWAY, or None: declared none

    def matches(self, method: str, path: str) -> bool | None:
        """True: this route takes the request; False: the path only (405); None: neither."""
        if not self.regex.match(path):
            return None
        return self.methods is None or method in self.methods


def placed_routes(routes: Sequence[BaseRoute]) -> list[PlacedRoute]:
    """Every route of ``routes`` (an app's), in the order the app tries them, with the
    placement it declares."""
    placed = []
    for route in flat_routes(routes):
        original = getattr(route, "original_route", route)
        methods = getattr(route, "methods", None)
        placed.append(
            PlacedRoute(
                name=str(getattr(route, "name", "") or ""),
                path=str(route.path),
                regex=route.path_regex,
                methods=None if methods is None else frozenset(methods),
                api=isinstance(original, APIRoute),
                placement=placement_of(route),
            )
        )
    return placed


def flat_routes(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    """The routes of the routers that ``routes`` include, in place of those routers: recent
    FastAPI keeps an included router as one route of the app (``iter_route_contexts`` walks
    it); older versions copied its routes into the app's."""
    iter_route_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_route_contexts is None:
        yield from routes
    else:
        yield from iter_route_contexts(routes)


class Routing:
    """Where each request to an app goes: ``deployment_for(method, path)``."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = placed_routes(routes)
        undeclared = [r.name for r in self.routes if r.api and r.placement is None]
        if undeclared:
            log.warning("routes that declare no placement stay on the gateway: %s", undeclared)

    def deployment_for(self, method: str, path: str) -> str | None:
        """The deployment that does this request's work, or None for the gateway's own app.

        A request with a method the route does not take goes to the gateway's app too, which
        answers it (405) as the single-process service does.
        """
        route = self._route(method, path)
        if route is None or route.placement in (None, GATEWAY):
            return None
        return route.placement

    def route_template(self, path: str, method: str) -> str:
        """The route template of a request that ``deployment_for`` sends to a deployment, as
        the app's metrics label it (for the answers the gateway makes itself)."""
        route = self._route(method, path)
        return (path.rstrip("/") or "/") if route is None else route.path

    def _route(self, method: str, path: str) -> PlacedRoute | None:
        """The route that takes the request, as the app picks it: the first that takes its
        method and path; none when one takes its path only (405) or none does (404)."""
        method = "GET" if method == "HEAD" else method  # HeadAsGetMiddleware: HEAD is GET
        for candidate in _with_slash_dropped(path):
            path_taken = False
            for route in self.routes:
                match = route.matches(method, candidate)
                if match:
                    return route
                path_taken = path_taken or match is False
            if path_taken:
                return None
        return None


def _with_slash_dropped(path: str) -> list[str]:
    """``path``, then (where it ends with one) ``path`` without its trailing slash: the app
    redirects there when no route takes ``path`` itself, and the replica's app answers that."""
    if path != "/" and path.endswith("/"):
        return [path, path.rstrip("/")]
    return [path]
