"""Which deployment serves each route of the API (``service.scaleout.routing``), and that
every route of the app says so itself (``service.api.placement``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from service.api.placement import EXPLAIN, GATEWAY, ON_EXPLAIN, ON_GATEWAY, ON_PREDICT, PREDICT
from service.app import create_app
from service.scaleout.routing import Routing, placed_routes
from service.settings import Settings

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"
ROUTING = Routing(create_app(Settings()).routes)
deployment_for = ROUTING.deployment_for
route_template = ROUTING.route_template
# Where every route of the app runs on Ray: moving one is a change to this table.
PLACEMENTS = {
    ("POST", "/predict"): PREDICT,
    ("GET", "/evidence/{class_id}/{file}"): GATEWAY,  # a thumbnail read from the data folder
    ("GET", "/explain"): GATEWAY,
    ("POST", "/explain/evaluate"): EXPLAIN,  # registered before /explain/{method}
    ("POST", "/explain/{method}"): EXPLAIN,
    ("POST", "/saliency"): EXPLAIN,
    ("POST", "/occlusion"): EXPLAIN,
    ("POST", "/lime"): EXPLAIN,
    ("POST", "/jobs/maximize"): EXPLAIN,
    ("POST", "/jobs/{method}"): EXPLAIN,  # the job runs in the replica that made it
    ("GET", "/jobs/{job_id}"): GATEWAY,  # jobs are read from the shared job board
    ("GET", "/jobs/{job_id}/result"): GATEWAY,
    ("GET", "/jobs/{job_id}/events"): GATEWAY,
    ("DELETE", "/jobs/{job_id}"): GATEWAY,
    ("GET", "/insight/filters"): GATEWAY,
    ("POST", "/insight/activations"): GATEWAY,
    ("GET", "/insight/receptive-field"): GATEWAY,
    ("GET", "/insight/top-patches"): GATEWAY,
    ("GET", "/insight/maximize"): EXPLAIN,
    ("GET", "/model"): GATEWAY,
    ("GET", "/models"): GATEWAY,
    ("GET", "/healthz"): GATEWAY,
    ("GET", "/readyz"): GATEWAY,
    ("GET", "/metrics"): GATEWAY,
    ("GET", "/"): GATEWAY,
    ("GET", "/docs"): GATEWAY,
    # the Open Inference Protocol: infer as /predict, its explanation extension as /explain
    ("GET", "/v2"): GATEWAY,
    ("GET", "/v2/health/live"): GATEWAY,
    ("GET", "/v2/health/ready"): GATEWAY,  # the gateway asks every deployment, as /readyz
    ("GET", "/v2/models/{name}"): GATEWAY,
    ("GET", "/v2/models/{name}/ready"): GATEWAY,
    ("POST", "/v2/models/{name}/infer"): PREDICT,
    ("POST", "/v2/models/{name}/explain"): EXPLAIN,
    ("GET", "/v2/models/{name}/versions/{version}"): GATEWAY,
    ("GET", "/v2/models/{name}/versions/{version}/ready"): GATEWAY,
    ("POST", "/v2/models/{name}/versions/{version}/infer"): PREDICT,
    ("POST", "/v2/models/{name}/versions/{version}/explain"): EXPLAIN,
    ("POST", "/v1/models/{name}:explain"): EXPLAIN,
}
PREDICT_ROUTES = {
    "/predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
}
EXPLAIN_ROUTES = {
    "/v2/models/{name}/explain",
    "/v2/models/{name}/versions/{version}/explain",
    "/v1/models/{name}:explain",
    "/explain/evaluate",
    "/explain/{method}",
    "/saliency",
    "/occlusion",
    "/lime",
    "/jobs/{method}",
    "/jobs/maximize",
}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/predict", PREDICT),
        ("POST", "/explain/gradcam", EXPLAIN),
        ("POST", "/explain/no-such-method", EXPLAIN),  # its replica answers 404 unknown_method
        ("POST", "/saliency", EXPLAIN),
        ("POST", "/occlusion", EXPLAIN),
        ("POST", "/lime", EXPLAIN),
        ("GET", "/insight/maximize", EXPLAIN),
        ("HEAD", "/insight/maximize", EXPLAIN),
        ("POST", "/jobs/lime", EXPLAIN),  # made and run by the replica that gets it
        ("POST", "/jobs/maximize", EXPLAIN),
        ("GET", "/jobs/abc", None),  # read from the job board by the gateway
        ("GET", "/jobs/abc/events", None),
        ("DELETE", "/jobs/abc", None),
        ("POST", "/jobs/abc/result", None),  # 405 from the gateway's own app
        ("GET", "/explain", None),
        ("GET", "/predict", None),  # 405 from the gateway's own app
        ("POST", "/explain", None),
        ("GET", "/insight/filters", None),
        ("GET", "/insight/activations", None),
        ("GET", "/", None),
        ("GET", "/static/app.js", None),
        ("GET", "/docs", None),
        ("GET", "/healthz", None),
        ("GET", "/model", None),
        ("GET", "/nowhere", None),
        ("POST", "/predict/extra", None),
        ("POST", "/v2/models/celebs8/infer", PREDICT),
        ("POST", "/v2/models/celebs8/versions/1.0.0/infer", PREDICT),
        ("POST", "/v2/models/celebs8/explain", EXPLAIN),
        ("POST", "/v1/models/celebs8:explain", EXPLAIN),
        ("GET", "/v2/models/celebs8", None),
        ("GET", "/v2/health/ready", None),
        ("GET", "/v2/models/celebs8/infer", None),  # 405 from the gateway's own app
    ],
)
def test_deployment_for(method: str, path: str, expected: str | None):
    assert deployment_for(method, path) == expected


def test_every_documented_operation_has_a_host():
    """Every operation of openapi.yaml: the heavy ones go to a deployment, the rest stay."""
    paths = yaml.safe_load(OPENAPI.read_text())["paths"]
    for template, operations in paths.items():
        concrete = template.replace("{method}", "gradcam").replace("{job_id}", "abc")
        concrete = concrete.replace("{name}", "celebs8").replace("{version}", "1.0.0")
        for method in operations:
            target = deployment_for(method.upper(), concrete)
            if method == "post" and template in PREDICT_ROUTES:
                assert target == PREDICT
            elif (method == "post" and template in EXPLAIN_ROUTES) or (
                template == "/insight/maximize"
            ):
                assert target == EXPLAIN, (method, template)
            else:
                assert target is None, (method, template)


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("POST", "/predict", "/predict"),
        ("POST", "/explain/gradcam", "/explain/{method}"),
        ("POST", "/explain/nope/", "/explain/{method}"),
        ("POST", "/lime/", "/lime"),
        ("GET", "/insight/maximize", "/insight/maximize"),
        ("POST", "/jobs/lime", "/jobs/{method}"),
        ("POST", "/jobs/maximize", "/jobs/maximize"),
    ],
)
def test_route_template(method: str, path: str, template: str):
    assert route_template(path, method) == template


def placements(app: FastAPI) -> dict[tuple[str, str], str]:
    """(method, path) -> placement of every API route of ``app``; fails for a route that
    declares none."""
    found = {}
    for route in placed_routes(app.routes):
        if not route.api:
            continue  # the static mounts and /openapi.json: the gateway's app
        assert route.placement is not None, (
            f"route {route.name} ({route.path}) declares no placement: add ON_PREDICT, "
            "ON_EXPLAIN or ON_GATEWAY to its dependencies (service.api.placement)"
        )
        for method in route.methods or ():
            found[method, route.path] = route.placement
    return found


def test_every_route_declares_where_it_runs():
    assert placements(create_app(Settings())) == PLACEMENTS


def test_a_route_without_placement_fails_the_check():
    app = create_app(Settings())
    app.post("/new-heavy-route")(_endpoint)
    with pytest.raises(AssertionError, match=r"\(/new-heavy-route\) declares no placement"):
        placements(app)


def test_a_route_declares_one_placement():
    router = APIRouter(dependencies=[ON_GATEWAY])
    router.post("/heavy", dependencies=[ON_EXPLAIN])(_endpoint)
    app = FastAPI()
    app.include_router(router)
    with pytest.raises(ValueError, match="several placements: Explain, Gateway"):
        Routing(app.routes)


def test_routing_follows_the_routes():
    """A route goes where it says, in the order the app matches routes; its other methods
    (405), unknown paths (404) and mounts stay on the gateway's app."""
    light = APIRouter(prefix="/things", dependencies=[ON_GATEWAY])
    light.get("/special")(_endpoint)
    light.get("/{thing}")(_endpoint)
    heavy = APIRouter(prefix="/things")
    heavy.post("/{thing}", dependencies=[ON_PREDICT])(_endpoint)
    heavy.put("/special", dependencies=[ON_EXPLAIN])(_endpoint)
    app = FastAPI()
    app.include_router(light)
    app.include_router(heavy)
    app.mount("/files", StaticFiles(directory=Path(__file__).parent), name="files")
    routing = Routing(app.routes)
    assert routing.deployment_for("POST", "/things/a") == PREDICT
    assert routing.deployment_for("POST", "/things/a/") == PREDICT  # the app redirects
    assert routing.deployment_for("PUT", "/things/special") == EXPLAIN
    assert routing.deployment_for("GET", "/things/special") is None
    assert routing.deployment_for("HEAD", "/things/a") is None
    assert routing.deployment_for("DELETE", "/things/a") is None  # 405
    assert routing.deployment_for("POST", "/things/a/b") is None  # 404
    assert routing.deployment_for("POST", "/files/x") is None
    assert routing.route_template("/things/a/", "POST") == "/things/{thing}"
    assert routing.route_template("/things/special", "PUT") == "/things/special"


async def _endpoint() -> None:
    return None
