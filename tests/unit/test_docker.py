"""Docker does not run here: check docker-compose.yml against the Compose Specification schema
(vendored by the check-jsonschema package, so nothing is downloaded) and check that the compose
file and the Dockerfile point at files and settings that exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_compose_file_follows_the_compose_specification(compose, validator):
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]

    assert errors == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["services"]["api"].update(healthcheck={"tset": ["CMD", "true"]}),
        lambda c: c["services"]["api"].update(ports="8000:8000"),
        lambda c: c["services"]["api"].update(
            deploy={"resources": {"reservations": {"devices": "gpu"}}}
        ),
    ],
    ids=["misspelt-key", "ports-not-a-list", "devices-not-a-list"],
)
def test_the_schema_catches_mistakes(compose, validator, breakage):
    broken = json.loads(json.dumps(compose))
    breakage(broken)

    assert not validator.is_valid(broken)


def test_api_service_has_a_readiness_healthcheck(compose):
    api = compose["services"]["api"]

    assert "profiles" not in api  # started by a plain `docker compose up`
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert "8000:8000" in api["ports"]


def test_gpu_profile_reserves_an_nvidia_device_and_uses_onnxruntime_gpu(compose):
    (gpu,) = [s for s in compose["services"].values() if "gpu" in s.get("profiles", [])]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["CELEBXAI_PROVIDERS"] == "cuda"
    assert any(dep.startswith("onnxruntime-gpu") for dep in extras[gpu["build"]["args"]["EXTRAS"]])
    assert "/readyz" in " ".join(gpu["healthcheck"]["test"])


def test_ray_profile_runs_the_ray_host_with_the_ray_extra(compose):
    """``docker compose --profile ray up api-ray``: the README's serve command with ``--ray``, in
    an image built with the extra that brings Ray Serve, on the same container port and readiness
    check as ``api``, with the shared memory Ray's object store needs."""
    (ray,) = [s for s in compose["services"].values() if "ray" in s.get("profiles", [])]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (serve,) = [Requirement(dep) for dep in extras[ray["build"]["args"]["EXTRAS"]]]
    shm_mib = int(ray["shm_size"].removesuffix("gb")) * 1024

    assert ray["command"] == ["python", "-m", "service", "--ray"]
    assert serve.name == "ray" and "serve" in serve.extras
    assert (
        ray["environment"]["CELEBXAI_PORT"]
        == compose["services"]["api"]["environment"]["CELEBXAI_PORT"]
    )
    assert [port.split(":")[1] for port in ray["ports"]] == ["8000"]
    assert "/readyz" in " ".join(ray["healthcheck"]["test"])
    assert shm_mib >= 1024
    assert ray["image"] != compose["services"]["api"]["image"]  # not the image without Ray


def _built_services(compose: dict) -> dict[str, dict]:
    """The services built from the Dockerfile here (the load test runs a stock image)."""
    return {name: service for name, service in compose["services"].items() if "build" in service}


def test_build_contexts_and_dockerfiles_exist(compose):
    for name, service in _built_services(compose).items():
        context = ROOT / service["build"]["context"]
        assert context.is_dir(), name
        assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name


def test_environment_names_settings_that_exist(compose):
    fields = set(Settings.model_fields)
    dockerfile_env = re.findall(rf"\b{ENV_PREFIX}([A-Z_]+)=", (ROOT / "Dockerfile").read_text())
    compose_env = [
        name.removeprefix(ENV_PREFIX)
        for service in _built_services(compose).values()
        for name in service.get("environment", {})
    ]

    for name in dockerfile_env + compose_env:
        assert name.lower() in fields, name


def test_dockerfile_copies_files_that_exist_and_are_not_ignored():
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()
    }
    sources = [
        source
        for line in re.findall(r"^COPY\s+(.+)$", dockerfile, re.M)
        for source in line.split()[:-1]
        if not source.startswith("--")
    ]

    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source not in ignored, source
    assert (ROOT / "models" / "celebs8").is_dir()


def test_loadtest_profile_runs_the_ci_locustfile_against_api(compose):
    loadtest = compose["services"]["loadtest"]
    env = loadtest["environment"]
    # target in the container -> source here, with ${VAR:-default} read as its default
    mounts = {
        PurePosixPath(v["target"]): ROOT / re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v["source"])
        for v in loadtest["volumes"]
    }

    def source_of(container_path: str) -> Path:
        path = PurePosixPath(container_path)
        (target,) = [t for t in mounts if path.is_relative_to(t)]
        return mounts[target] / path.relative_to(target)

    image, version = loadtest["image"].split(":")
    dev_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["dev"]
    (locust,) = [Requirement(dep) for dep in dev_extra if dep.startswith("locust")]

    assert loadtest["profiles"] == ["loadtest"]
    assert (
        source_of(env["LOCUST_LOCUSTFILE"]).resolve() == ROOT / "tests" / "load" / "locustfile.py"
    )
    assert source_of(env["CELEBXAI_DATA"]).resolve() == (ROOT.parent / "shared" / "data").resolve()
    assert image == "locustio/locust" and version in locust.specifier
    assert env["LOCUST_HOST"] == "http://api:8000"
    assert loadtest["depends_on"]["api"]["condition"] == "service_healthy"


def test_loadtest_environment_names_locust_options_that_exist(compose):
    """Every LOCUST_* variable is one of locust's options or the locustfile's own (listed by a
    subprocess: importing locust here would monkey-patch this test process with gevent)."""
    script = (
        "import json, runpy, sys; from locust import events; "
        "from locust.argument_parser import get_parser; parser = get_parser(); "
        "runpy.run_path(sys.argv[1]); events.init_command_line_parser.fire(parser=parser); "
        "print(json.dumps([a.env_var for a in parser._actions if getattr(a, 'env_var', None)]))"
    )
    known = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "tests" / "load" / "locustfile.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    used = [
        name
        for name in compose["services"]["loadtest"]["environment"]
        if name.startswith("LOCUST_")
    ]

    assert "LOCUST_REPORT_JSON" in used
    assert set(used) <= set(json.loads(known.splitlines()[-1]))
