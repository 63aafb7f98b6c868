"""Docker does not run here: check docker-compose.yml against the Compose Specification schema
(vendored by the check-jsonschema package, so nothing is downloaded) and check that the compose
file and the Dockerfile point at files and settings that exist."""
from __future__ import annotations

import json
import re
import tomllib
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

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
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]

    assert errors == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["services"]["api"].update(healthcheck={"tset": ["CMD", "true"]}),
        lambda c: c["services"]["api"].update(ports="8000:8000"),
        lambda c: c["services"]["api"].update(deploy={"resources": {"reservations": {"devices": "gpu"}}}),
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
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["CELEBXAI_PROVIDERS"] == "cuda"
    assert any(dep.startswith("onnxruntime-gpu") for dep in extras[gpu["build"]["args"]["EXTRAS"]])
    assert "/readyz" in " ".join(gpu["healthcheck"]["test"])


def test_build_contexts_and_dockerfiles_exist(compose):
    for name, service in compose["services"].items():
        context = ROOT / service["build"]["context"]
        assert context.is_dir(), name
        assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name


def test_environment_names_settings_that_exist(compose):
    fields = set(Settings.model_fields)
    dockerfile_env = re.findall(rf"\b{ENV_PREFIX}([A-Z_]+)=", (ROOT / "Dockerfile").read_text())
    compose_env = [
        name.removeprefix(ENV_PREFIX)
        for service in compose["services"].values()
        for name in service.get("environment", {})
    ]

    for name in dockerfile_env + compose_env:
        assert name.lower() in fields, name


def test_dockerfile_copies_files_that_exist_and_are_not_ignored():
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
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
