"""Run the service on Ray Serve: ``python -m service --ray``, or ``serve run`` with a config.

``build_app(args)`` is the application builder for a Serve config file
(``import_path: service.scaleout.app:build_app``; ``args`` are ``Settings`` field names, and
``CELEBXAI_*`` environment variables apply as for ``python -m service``). ``run(settings)``
starts a local Ray instance (or joins the cluster that ``ray_address`` or ``RAY_ADDRESS``
names), starts Serve's HTTP proxy on ``host``:``port``, deploys, and serves until Ctrl-C or
SIGTERM, then takes the application down (and the local Ray instance, if it started one).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import ray
from ray import serve

from service.scaleout.deployments import application
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
        # where several nodes share a machine, and a balancer in front of them anyway).
        serve.start(
            http_options={"host": settings.host, "port": settings.port},
            proxy_location="HeadOnly",
        )
        serve.run(application(settings), name=APP_NAME, route_prefix="/", blocking=False)
        log.info(
            "serving on http://%s:%d (Ray Serve application %r, ready in %.1f s)",
            settings.host,
            settings.port,
            APP_NAME,
            time.perf_counter() - started,
        )
        _wait_for_stop()
    finally:
        log.info("shutting down")
        if address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        ray.shutdown()


def _wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop.wait(1.0):
        pass
