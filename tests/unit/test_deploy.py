"""Kubernetes and Ray do not run here: check deploy/ against the schemas they publish.

- deploy/kubernetes/rayservice.yaml against KubeRay's RayService CRD (vendored under
  tests/schemas/kuberay, with its origin; nothing is downloaded), read as the API server reads it
  under kubectl's default strict field validation: a field the schema does not name is an error;
- its serveConfigV2 is deploy/ray/serve.yaml (the same document once parsed), so they cannot drift;
- deploy/ray/serve.yaml against Ray Serve's own config schema; its ``args`` are Settings fields,
  and its per-deployment options are the ones the application derives from those args.
"""

from __future__ import annotations

import copy
import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "deploy" / "ray" / "serve.yaml"
RAYSERVICE = ROOT / "deploy" / "kubernetes" / "rayservice.yaml"
KUBERAY = ROOT / "tests" / "schemas" / "kuberay"
CRD = KUBERAY / "ray.io_rayservices.yaml"
APP_IMPORT_PATH = "service.scaleout.app:build_app"


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    return yaml.safe_load(SERVE_CONFIG.read_text())


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return yaml.safe_load(RAYSERVICE.read_text())


@pytest.fixture(scope="module")
def app_config(serve_config) -> dict[str, Any]:
    (app,) = serve_config["applications"]
    return app


def closed(schema: Any) -> Any:
    """``schema`` with every object that lists its ``properties`` closed to others.

    A structural CRD schema leaves ``additionalProperties`` out: the API server prunes unknown
    fields, and with kubectl's default ``--validate=strict`` refuses them. jsonschema would let
    them through, so a misspelt field would pass; closing the objects makes it an error, except
    where the schema says ``x-kubernetes-preserve-unknown-fields`` or gives additionalProperties.
    """
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    # 1 MB of YAML: libyaml's loader where PyYAML has it (0.5 s instead of 8)
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    schema = closed(v1["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_vendored_crd_is_the_published_file():
    """The file is KubeRay's own, byte for byte: its sha256 is the one its README records."""
    (recorded,) = re.findall(r"sha256: `([0-9a-f]{64})`", (KUBERAY / "README.md").read_text())

    assert hashlib.sha256(CRD.read_bytes()).hexdigest() == recorded


def test_rayservice_follows_the_kuberay_crd(rayservice, validator):
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(rayservice)
    ]

    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    assert errors == []


def _worker(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda m: m["spec"].update(serveConfigv2=m["spec"].pop("serveConfigV2")),
        lambda m: _worker(m).update(replicas="1"),
        lambda m: _worker(m)["template"]["spec"]["containers"][0].update(
            readinessProbe={"httpGet": {"path": "/-/healthz", "port": 8000, "shceme": "HTTP"}}
        ),
        lambda m: m["spec"]["rayClusterConfig"]["headGroupSpec"].pop("template"),
        lambda m: m["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update(
            {"num-cpus": 0}
        ),
    ],
    ids=[
        "misspelt-key",
        "replicas-not-an-integer",
        "misspelt-key-in-a-pod-template",
        "head-without-template",
        "ray-start-param-not-a-string",
    ],
)
def test_the_schema_catches_mistakes(rayservice, validator, breakage):
    broken = copy.deepcopy(rayservice)
    breakage(broken)

    assert not validator.is_valid(broken)


def test_rayservice_embeds_the_serve_config(rayservice, serve_config):
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == serve_config


def test_rayservice_runs_the_ray_extra_image_on_the_serve_port(rayservice, serve_config):
    """Head and workers run one image, of the Ray version the ray extra installs; every Ray
    container exposes Serve's HTTP port under the name KubeRay looks for (``serve``), and a
    worker is ready when its Serve proxy is."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    containers = [group["template"]["spec"]["containers"][0] for group in groups]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (ray,) = [Requirement(dep) for dep in extras["ray"]]
    port = serve_config["http_options"]["port"]

    assert len({container["image"] for container in containers}) == 1
    assert cluster["rayVersion"] in ray.specifier
    for container in containers:
        assert {"containerPort": port, "name": "serve"} in container["ports"]
    for group in cluster["workerGroupSpecs"]:
        probe = group["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        assert probe == {"path": "/-/healthz", "port": "serve"}


def _cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "500m") in CPUs."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_a_worker_pod_holds_a_replica_of_each_deployment(rayservice, app_config):
    """Ray places a replica only on a node with the CPUs it reserves: a worker pod must have
    them, or the deployment never starts (the head takes none: num-cpus 0)."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    reserved = sum(d["ray_actor_options"]["num_cpus"] for d in app_config["deployments"])

    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert _cpus(resources["requests"]["cpu"]) >= reserved


def test_serve_config_follows_ray_serves_schema(serve_config, app_config):
    schema = pytest.importorskip("ray.serve.schema", reason="needs the ray extra")

    schema.ServeDeploySchema.model_validate(serve_config)
    assert app_config["import_path"] == APP_IMPORT_PATH
    assert app_config["route_prefix"] == "/"


def test_serve_config_args_are_settings(app_config):
    """Settings ignores unknown names (``extra="ignore"``), so a misspelt arg would do nothing
    without a word: each must be a field, and the values must validate."""
    args = app_config["args"]

    assert set(args) <= set(Settings.model_fields)
    Settings(**args)


def test_serve_config_deployment_options_are_the_ones_its_args_give(app_config):
    """The options Ray Serve would take from the code for these args (what ``serve build``
    writes, through the same Ray functions) are the ones the file sets: the file's entries
    override the code's, so a difference would silently replace the settings."""
    pytest.importorskip("ray.serve", reason="needs the ray extra")
    from ray.serve._private.build_app import build_app
    from ray.serve.deployment import deployment_to_schema

    from service.scaleout.app import build_app as application

    built = build_app(application(app_config["args"]), name=app_config["name"])
    from_code = {
        d.name: deployment_to_schema(d).model_dump(exclude_unset=True) for d in built.deployments
    }

    assert app_config["deployments"]
    for entry in app_config["deployments"]:
        assert entry == {key: from_code[entry["name"]][key] for key in entry}, entry["name"]
