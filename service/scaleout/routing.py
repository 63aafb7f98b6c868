"""Which deployment serves a request: a pure function of its method and path.

Explanations cost 10 to 100 times a prediction, so they run in replicas of their own
(``Explain``), scaled apart from ``/predict`` (``Predict``); so do jobs, which the replica that
was asked runs (reading them, their events and ``DELETE`` are the gateway's: the records are
on the shared ``JobBoard``). Everything else (the page, static
files, docs, health, ``/model``, the cheap insight routes, the list of methods) is answered by
the gateway's own in-process app (``None``).
"""

from __future__ import annotations

import re

PREDICT = "Predict"
EXPLAIN = "Explain"
DEPLOYMENTS = (PREDICT, EXPLAIN)

_EXPLAIN_POST = re.compile(r"^/(?:explain/[^/]+|jobs/[^/]+|saliency|occlusion|lime)/?$")
_READ_METHODS = ("GET", "HEAD")


def deployment_for(method: str, path: str) -> str | None:
    """The deployment that does this request's work, or None for the gateway's own app.

    A request with a method the route does not take goes to the gateway's app too, which
    answers it (405) as the single-process service does.
    """
    if method == "POST":
        if path in ("/predict", "/predict/"):
            return PREDICT
        if _EXPLAIN_POST.match(path):
            return EXPLAIN
    if method in _READ_METHODS and path in ("/insight/maximize", "/insight/maximize/"):
        return EXPLAIN
    return None


def route_template(path: str) -> str:
    """The route template of a path that ``deployment_for`` sends to a deployment, as the
    app's metrics label it (for the answers the gateway makes itself)."""
    path = path.rstrip("/") or "/"
    if path.startswith("/explain/"):
        return "/explain/{method}"
    if path.startswith("/jobs/") and path != "/jobs/maximize":
        return "/jobs/{method}"
    return path
