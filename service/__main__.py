"""``python -m service``: serve a model bundle over HTTP.

Every ``Settings`` field is a flag here (``--max-batch-size 16``) and an environment variable
(``CELEBXAI_MAX_BATCH_SIZE=16``); a flag wins over the environment. ``--help`` lists them all.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from pathlib import Path

# Before torch loads: its OpenMP threads otherwise busy-wait between parallel regions, which next
# to any other busy process (a second worker, a load generator, a shared CPU) makes gradient
# explanations 20-70x slower. An explicit OMP_WAIT_POLICY in the environment still wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pydantic import ValidationError

from service.inference.allocator import configure_malloc
from service.settings import ENV_PREFIX, Settings

OPENAPI_COMMAND = "python -m service --export-openapi openapi.yaml"
_METAVARS = {"model": "DIR", "host": "ADDR", "port": "PORT", "api_key": "KEY"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve a celebxai model bundle over HTTP (FastAPI + uvicorn). Each option "
        f"can also be set as an environment variable {ENV_PREFIX}<OPTION> (e.g. "
        f"{ENV_PREFIX}PORT=9000); list values are comma-separated.",
    )
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) or "(empty)"
        elif default is None:
            default = "none"
        choices = typing.get_args(field.annotation)
        is_literal = typing.get_origin(field.annotation) is typing.Literal
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            choices=[str(choice) for choice in choices] if is_literal else None,
            metavar=None if is_literal else _metavar(name, field.annotation),
            help=f"{field.description} (default: {default}; env {ENV_PREFIX}{name.upper()})",
        )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="serve on Ray Serve (the ray extra): /predict and the explanations in deployments "
        "of their own, scaled apart (the ray_* options); a local Ray instance, or the cluster "
        "that --ray-address or RAY_ADDRESS names",
    )
    parser.add_argument(
        "--export-openapi",
        metavar="PATH",
        help="write the OpenAPI document as YAML to PATH ('-' for stdout) and exit",
    )
    return parser


def _metavar(name: str, annotation: object) -> str:
    if annotation is bool:
        return "{true,false}"
    return _METAVARS.get(name, name.upper())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.export_openapi:
        return export_openapi(args.export_openapi)
    overrides = {
        name: value for name in Settings.model_fields if (value := getattr(args, name)) is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        from service.errors import describe_validation_errors

        parser.error(f"invalid settings: {describe_validation_errors(exc.errors())}")
    from service.observability.tracing import TracingError, configure_from_environment

    try:
        configure_from_environment()  # traces, as the OTEL_* variables ask (default: off)
    except TracingError as exc:
        parser.error(str(exc))
    if args.ray:
        from service.scaleout.app import run

        run(settings)
        return 0
    serve(settings)
    return 0


def serve(settings: Settings) -> None:
    """Run the app under uvicorn with the service's bounds on slow, oversized and too many
    clients (``connection_limits``) and an access log that never shows a key from a query
    string (``service.http.server``)."""
    from service.app import create_app
    from service.http.server import run_server

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    configure_malloc()  # before the model, its buffers and the worker threads exist
    app = create_app(settings)
    run_server(app, settings, app.state.connections_closed)


def export_openapi(path: str) -> int:
    from service.app import openapi_yaml

    text = openapi_yaml()
    if path == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
