from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.__main__ import build_parser, main
from service.settings import DEFAULT_MODEL, Settings


def test_defaults_serve_the_committed_bundle_locally():
    settings = Settings(_env_file=None)

    assert settings.model == DEFAULT_MODEL
    assert DEFAULT_MODEL.parts[-2:] == ("models", "celebs8")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.api_key is None


def test_environment_variables_use_the_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("CELEBXAI_MODEL", str(tmp_path))
    monkeypatch.setenv("CELEBXAI_PORT", "9001")
    monkeypatch.setenv("CELEBXAI_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("CELEBXAI_API_KEY", "s3cret")
    monkeypatch.setenv("CELEBXAI_PROVIDERS", "cpu")

    settings = Settings(_env_file=None)

    assert settings.model == tmp_path
    assert settings.port == 9001
    assert settings.cors_origins == ["http://a.example", "http://b.example"]
    assert settings.api_key.get_secret_value() == "s3cret"
    assert settings.providers == "cpu"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_is_an_error_not_no_authentication(monkeypatch, key):
    monkeypatch.setenv("CELEBXAI_API_KEY", key)

    with pytest.raises(ValidationError, match="API key is empty"):
        Settings(_env_file=None)


def test_an_unset_api_key_means_no_authentication(monkeypatch):
    monkeypatch.delenv("CELEBXAI_API_KEY", raising=False)

    assert Settings(_env_file=None).api_key is None


def test_connection_bounds_have_finite_defaults():
    settings = Settings(_env_file=None)

    assert 0 < settings.keep_alive_timeout_s <= settings.header_timeout_s <= 60
    assert 0 < settings.body_timeout_s <= 120
    assert 16 * 1024 <= settings.max_header_bytes <= 1024 * 1024


@pytest.mark.parametrize(
    ("field", "value"),
    [("header_timeout_s", "0"), ("body_timeout_s", "-1"), ("max_header_bytes", "100")],
)
def test_connection_bounds_must_be_positive(field, value):
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **{field: value})


@pytest.mark.parametrize(
    ("field", "value"), [("providers", "tpu"), ("port", "-1"), ("max_batch_size", "0")]
)
def test_invalid_values_fail(field, value):
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **{field: value})


def test_every_setting_is_a_cli_flag():
    flags = {action.dest for action in build_parser()._actions}

    assert set(Settings.model_fields) <= flags


def test_cli_flags_override(tmp_path):
    args = build_parser().parse_args(
        ["--model", str(tmp_path), "--port", "9002", "--providers", "cpu"]
    )

    assert (args.model, args.port, args.providers) == (str(tmp_path), "9002", "cpu")


def test_help_lists_the_settings():
    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, check=True
    )

    for flag in ("--model DIR", "--host", "--port", "--providers", "--threads", "--api-key"):
        assert flag in result.stdout
    assert "CELEBXAI_MAX_UPLOAD_BYTES" in result.stdout


def test_invalid_cli_value_exits_with_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", "not-a-port"], capture_output=True, text=True
    )

    assert result.returncode == 2
    assert "port" in result.stderr


def test_an_empty_api_key_stops_start_up_with_a_clear_message(monkeypatch, capsys):
    monkeypatch.setenv("CELEBXAI_API_KEY", "")

    with pytest.raises(SystemExit) as stopped:
        main([])

    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "invalid settings: api_key: the API key is empty" in error
    assert "errors.pydantic.dev" not in error and "input_value" not in error
