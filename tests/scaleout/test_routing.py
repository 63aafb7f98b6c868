"""Which deployment serves each route of the API (``service.scaleout.routing``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.scaleout.routing import EXPLAIN, PREDICT, deployment_for, route_template

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"
EXPLAIN_ROUTES = {
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
    ],
)
def test_deployment_for(method: str, path: str, expected: str | None):
    assert deployment_for(method, path) == expected


def test_every_documented_operation_has_a_host():
    """Every operation of openapi.yaml: the heavy ones go to a deployment, the rest stay."""
    paths = yaml.safe_load(OPENAPI.read_text())["paths"]
    for template, operations in paths.items():
        concrete = template.replace("{method}", "gradcam").replace("{job_id}", "abc")
        for method in operations:
            target = deployment_for(method.upper(), concrete)
            if (method, template) == ("post", "/predict"):
                assert target == PREDICT
            elif (method == "post" and template in EXPLAIN_ROUTES) or (
                template == "/insight/maximize"
            ):
                assert target == EXPLAIN, (method, template)
            else:
                assert target is None, (method, template)


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/predict", "/predict"),
        ("/explain/gradcam", "/explain/{method}"),
        ("/explain/nope/", "/explain/{method}"),
        ("/lime/", "/lime"),
        ("/insight/maximize", "/insight/maximize"),
        ("/jobs/lime", "/jobs/{method}"),
        ("/jobs/maximize", "/jobs/maximize"),
    ],
)
def test_route_template(path: str, template: str):
    assert route_template(path) == template
