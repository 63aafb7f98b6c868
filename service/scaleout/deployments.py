"""The Ray Serve deployments: every replica hosts the service's own app, in process.

- ``AppReplica``, deployed twice with different options as ``Predict`` and ``Explain``: runs
  ``create_app(settings)`` with its lifespan (the bundle loaded and checked once per replica,
  as in the single-process service) and answers the ``ForwardedRequest``s the gateway sends
  it (``handle``).
- ``Gateway``, the HTTP ingress: hosts the app too, for the general routes, and routes the rest
  (``gateway.Gateway``). It has no queue limit and room for many requests at once (it only
  waits), so it is never the one to shed load with Ray's plain-text 503.
- ``MetricsBoard``: the one actor where replicas publish their registries for ``/metrics``.
"""

from __future__ import annotations

import os

# Before torch loads in a replica process (see ``service.__main__``).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import time
from typing import Any

import ray
from anyio import to_thread
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from service.app import create_app
from service.http.security_headers import SecurityHeadersMiddleware
from service.inference.allocator import configure_malloc
from service.observability import tracing
from service.observability.trace_middleware import TracingMiddleware
from service.scaleout.forward import ForwardedRequest, ForwardedResponse, run_asgi
from service.scaleout.gateway import SERVED_BY_HEADER
from service.scaleout.gateway import Gateway as GatewayApp
from service.scaleout.job_board import BOARD_NAME, MAX_ONGOING_CALLS, JobBoard, RemoteJobs
from service.scaleout.metrics_merge import MetricsBoard as Board
from service.scaleout.publisher import MetricsPublisher
from service.scaleout.routing import EXPLAIN, PREDICT
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger(__name__)
# The gateway only waits on replicas; its limit is far above any replica's queue.
GATEWAY_MAX_ONGOING_REQUESTS = 4096
# anyio's default thread limit: the worker threads the app has in the single process.
APP_THREADS = 40
# How often a stopping replica checks for requests still in progress (Ray Serve's default is 2
# s, slept before the first check even when none is: with the deployments stopped one after
# another, gateway first, that made a shutdown 8.7 s longer). In-progress requests are still
# waited for, up to Ray Serve's graceful_shutdown_timeout_s.
STOP_CHECK_S = 0.25


class _HostsApp:
    """What both kinds of replica do: host the service's app and publish its metrics."""

    service_app: Any
    publisher: MetricsPublisher
    replica_name: str
    node_id: str

    def _host(self, settings: Settings, board: DeploymentHandle, jobs: DeploymentHandle) -> None:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # The service's own loggers at its level, whatever Ray made of the worker's root logger.
        logging.getLogger("service").setLevel(settings.log_level.upper())
        configure_malloc()
        tracing.configure_from_environment()  # as the driver does: OTEL_* (default: off)
        context = serve.get_replica_context()
        self.replica_name = f"{context.deployment}#{context.replica_id.unique_id}"
        self.node_id = ray.get_runtime_context().get_node_id()
        self.service_app = create_app(settings)
        self.service_state.use_job_store(RemoteJobs(jobs))
        self.publisher = MetricsPublisher(
            self.replica_name,
            self.render_metrics,
            lambda replica, text: board.publish.remote(replica, text),
            lambda replica: board.withdraw.remote(replica),
        )
        self.publisher.start()

    @property
    def service_state(self) -> ServiceState:
        return self.service_app.state.service

    def render_metrics(self) -> str:
        return self.service_state.metrics.render().decode()

    async def check_health(self) -> None:
        """Unhealthy (Ray replaces the replica) once its app stopped; an app whose bundle
        failed to load stays up and says why through ``/readyz``, as in the single process."""
        if self.service_state.phase == "stopped":
            raise RuntimeError(f"{self.replica_name}: {self.service_state.reason}")

    async def __del__(self) -> None:
        await self.publisher.stop()


class AppReplica(_HostsApp):
    """Not an ingress (an application has one): it runs its app's lifespan itself, as Ray
    does for the gateway's, and answers before taking requests only once it is done."""

    # Ray Serve awaits an async constructor: the replica takes requests once it returned.
    async def __init__(  # type: ignore[misc]
        self, settings: Settings, board: DeploymentHandle, jobs: DeploymentHandle
    ) -> None:
        started = time.perf_counter()
        self._host(settings, board, jobs)
        self._lifespan = self.service_app.router.lifespan_context(self.service_app)
        await self._lifespan.__aenter__()
        log.info(
            "replica %s on node %s started in %.1f s: %s",
            self.replica_name,
            self.node_id,
            time.perf_counter() - started,
            self.service_state.reason,
        )

    async def __del__(self) -> None:
        await self._lifespan.__aexit__(None, None, None)
        await super().__del__()

    async def handle(self, request: ForwardedRequest) -> ForwardedResponse:
        _keep_app_threads()
        response = await run_asgi(self.service_app, request)
        served_by = f"{self.replica_name} node={self.node_id}".encode()
        response.headers.append((SERVED_BY_HEADER.encode(), served_by))
        return response


@serve.ingress()
class Gateway(_HostsApp):
    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self,
        settings: Settings,
        predict: DeploymentHandle,
        explain: DeploymentHandle,
        board: DeploymentHandle,
        jobs: DeploymentHandle,
    ) -> None:
        self._host(settings, board, jobs)
        self.board = board
        handles = {PREDICT: predict, EXPLAIN: explain}
        self.gateway = GatewayApp(
            local=self.service_app,
            settings=settings,
            dispatch=lambda name, request: handles[name].handle.remote(request),
            expositions=self._expositions,
            metrics=self.service_state.metrics,
            queue_full=(BackPressureError,),
            cancelled=(TaskCancelledError,),  # RequestCancelledError among them
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        # The security headers also on the answers the gateway makes itself (Ray's refusals);
        # forwarded answers already carry them (set by the replica's app: left as they are).
        # Its span of each request is the parent of the replica's, named by the app's route.
        routing = self.gateway.routing
        return TracingMiddleware(
            SecurityHeadersMiddleware(self.gateway),
            route_of=lambda scope: routing.route_template(scope["path"], scope["method"]),
        )

    async def _expositions(self) -> list[str]:
        return await self.board.snapshot.remote(self.replica_name)


def _keep_app_threads() -> None:
    """Give the replica's app the worker threads it has in the single process (anyio's default).

    Ray Serve caps anyio's default thread limiter on a replica's loop at the deployment's
    ``max_ongoing_requests`` (meant for plain sync handlers, where each request holds one
    thread while it runs) and sets it again whenever the deployment is reconfigured. The app's
    requests hold a thread for moments (decoding, the face search, sync dependencies), but a job
    holds one for its whole run, long after its ``POST`` was answered: with the Explain
    deployment's 2, two running jobs held every token, and every request to the replica
    (``POST /jobs``, even ``/readyz``) waited for them to end. Jobs are bounded by the app's own
    explanation gate, not by threads. Called on the loop that runs the app (the limiter is
    per loop), before each request."""
    limiter = to_thread.current_default_thread_limiter()
    if limiter.total_tokens < APP_THREADS:
        limiter.total_tokens = APP_THREADS


class MetricsBoard:
    def __init__(self) -> None:
        self.board = Board()

    async def publish(self, replica: str, text: str) -> None:
        self.board.publish(replica, text)

    async def withdraw(self, replica: str) -> None:
        self.board.withdraw(replica)

    async def snapshot(self, exclude: str = "") -> list[str]:
        return self.board.snapshot(exclude)


def actor_options(num_cpus: float) -> dict[str, Any]:
    """Ray actor options of a deployment that hosts the app: its CPUs, and the driver's OTEL_*
    variables where it has any (on a cluster a replica's process does not inherit them), so
    that every replica traces as the driver does."""
    options: dict[str, Any] = {"num_cpus": num_cpus}
    if otel := tracing.otel_environment():
        options["runtime_env"] = {"env_vars": otel}
    return options


def replica_options(group: str, settings: Settings) -> dict[str, Any]:
    """Ray Serve options of the ``Predict`` or ``Explain`` deployment, from the settings
    ``ray_predict_*`` / ``ray_explain_*``."""
    prefix = f"ray_{group.lower()}_"

    def setting(name: str) -> Any:
        return getattr(settings, prefix + name)

    options: dict[str, Any] = {
        "graceful_shutdown_wait_loop_s": STOP_CHECK_S,
        "name": group,
        "max_ongoing_requests": setting("max_ongoing_requests"),
        "max_queued_requests": setting("max_queued_requests"),
        "ray_actor_options": actor_options(num_cpus=setting("cpus")),
    }
    if setting("max_replicas") > setting("replicas"):
        options["autoscaling_config"] = {
            "min_replicas": setting("replicas"),
            "max_replicas": setting("max_replicas"),
            "target_ongoing_requests": setting("target_ongoing_requests"),
        }
    else:
        options["num_replicas"] = setting("replicas")
    return options


def application(settings: Settings) -> serve.Application:
    """The whole service as one Ray Serve application (ingress: the gateway)."""
    board = serve.deployment(
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        graceful_shutdown_wait_loop_s=STOP_CHECK_S,
    )(MetricsBoard)
    predict = serve.deployment(**replica_options(PREDICT, settings))(AppReplica)
    explain = serve.deployment(**replica_options(EXPLAIN, settings))(AppReplica)
    gateway = serve.deployment(
        num_replicas=1,
        max_ongoing_requests=GATEWAY_MAX_ONGOING_REQUESTS,
        max_queued_requests=-1,
        ray_actor_options=actor_options(num_cpus=0),
        graceful_shutdown_wait_loop_s=STOP_CHECK_S,
    )(Gateway)
    job_board = serve.deployment(
        name=BOARD_NAME,
        num_replicas=1,
        max_ongoing_requests=MAX_ONGOING_CALLS,
        max_queued_requests=-1,
        ray_actor_options={"num_cpus": 0},
        graceful_shutdown_wait_loop_s=STOP_CHECK_S,
    )(JobBoard)
    boards = board.bind()
    jobs = job_board.bind(settings, boards)
    return gateway.bind(
        settings,
        predict.bind(settings, boards, jobs),
        explain.bind(settings, boards, jobs),
        boards,
        jobs,
    )
