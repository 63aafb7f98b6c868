"""Run the service on Ray Serve: ``python -m service --ray``, or ``serve run`` with a config.

``build_app(args)`` is the application builder for a Serve config file
(``import_path: service.scaleout.app:build_app``; ``args`` are ``Settings`` field names, and
``CELEBXAI_*`` environment variables apply as for ``python -m service``). ``run(settings)``
starts a local Ray instance (or joins the cluster that ``ray_address`` or ``RAY_ADDRESS``
names), starts Serve's HTTP proxy on a loopback port of its own, deploys, and serves clients
on ``host``:``port`` from the front (``front``: the single process's connection bounds, relaying
to that proxy) until Ctrl-C or SIGTERM, then takes the application down (and the local Ray
instance, if it started one).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import ray
from prometheus_client import CollectorRegistry
from ray import serve

from service.http.connection_limits import refusal_counter
from service.http.server import run_server
from service.observability.trace_middleware import TracingMiddleware
from service.scaleout.deployments import application
from service.scaleout.front import Relay, Upstream, front_publisher
from service.settings import Settings

APP_NAME = "celebxai"
log = logging.getLogger(__name__)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``args`` (``Settings`` fields, e.g. ``{"model": "..."}``)."""
    return application(Settings(**args))


def run(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    started = time.perf_counter()
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined the Ray cluster at %s", address)
    else:
        # "local": a new instance even where a `ray start` cluster runs on this machine (plain
        # ray.init() would join that one); joining is what ray_address / RAY_ADDRESS are for.
        ray.init(address="local", num_cpus=settings.ray_num_cpus or None, include_dashboard=False)
        log.info(
            "started a local Ray instance at %s (%g CPUs); other drivers join it with "
            "ray.init(address=...)",
            ray.get_runtime_context().gcs_address,
            ray.cluster_resources().get("CPU", 0),
        )
    try:
        # One HTTP address, on the head node (a proxy per node would need a port per node
        # where several nodes share a machine, and a balancer in front of them anyway), reached
        # only through the front on this machine.
        upstream = Upstream("127.0.0.1", _free_loopback_port())
        serve.start(
            http_options={"host": upstream.host, "port": upstream.port},
            proxy_location="HeadOnly",
        )
        serve.run(application(settings), name=APP_NAME, route_prefix="/", blocking=False)
        log.info(
            "serving on http://%s:%d (Ray Serve application %r behind its proxy at %s:%d, "
            "ready in %.1f s)",
            settings.host,
            settings.port,
            APP_NAME,
            upstream.host,
            upstream.port,
            time.perf_counter() - started,
        )
        serve_front(settings, upstream)
    finally:
        log.info("shutting down")
        if address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        ray.shutdown()


def serve_front(settings: Settings, upstream: Upstream) -> None:
    """Serve clients on ``host``:``port`` through ``front.Relay`` until SIGINT or SIGTERM."""
    registry = CollectorRegistry()
    closed = refusal_counter(registry)
    board = serve.get_deployment_handle("MetricsBoard", app_name=APP_NAME)
    publisher = front_publisher(registry, board)
    relay = Relay(upstream, on_start=publisher.start, on_stop=publisher.stop)
    # the front's span of each request, whose context Relay passes on to the gateway
    front = TracingMiddleware(relay)
    # Ray's proxy dates and names its answers already; the front passes them on as they are.
    run_server(front, settings, closed, lifespan="on", server_header=False, date_header=False)


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
