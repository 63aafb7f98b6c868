"""openapi.yaml at the repo root is the API as served: regenerate it when this fails."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.__main__ import OPENAPI_COMMAND
from service.app import openapi_yaml

OPENAPI_FILE = Path(__file__).resolve().parents[2] / "openapi.yaml"
CONTRACT_PATHS = {"/predict", "/model", "/healthz", "/readyz", "/metrics"}


def test_openapi_yaml_matches_the_app():
    committed = OPENAPI_FILE.read_text(encoding="utf-8") if OPENAPI_FILE.exists() else ""

    assert openapi_yaml() == committed, f"openapi.yaml is out of date: run `{OPENAPI_COMMAND}`"


def test_openapi_documents_the_contract():
    document = yaml.safe_load(openapi_yaml())

    assert CONTRACT_PATHS <= set(document["paths"])
    predict = document["paths"]["/predict"]["post"]
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert {"200", "400", "401", "413", "415", "422", "503"} <= set(predict["responses"])
    assert "APIKeyHeader" in document["components"]["securitySchemes"]
