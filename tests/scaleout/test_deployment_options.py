"""The Ray Serve options of each deployment come from the settings (``ray_predict_*``,
``ray_explain_*``), and ``build_app`` takes settings by field name, as a Serve config's
``args`` give them."""

from __future__ import annotations

from pathlib import Path

from service.scaleout.app import build_app
from service.scaleout.deployments import STOP_CHECK_S, replica_options
from service.settings import Settings


def test_fixed_replica_count():
    settings = Settings(
        _env_file=None,
        ray_explain_replicas=3,
        ray_explain_cpus=1.5,
        ray_explain_max_ongoing_requests=4,
        ray_explain_max_queued_requests=12,
    )

    assert replica_options("Explain", settings) == {
        "graceful_shutdown_wait_loop_s": STOP_CHECK_S,
        "name": "Explain",
        "num_replicas": 3,
        "max_ongoing_requests": 4,
        "max_queued_requests": 12,
        "ray_actor_options": {"num_cpus": 1.5},
    }


def test_autoscaling_when_max_replicas_is_above_replicas():
    settings = Settings(
        _env_file=None,
        ray_predict_replicas=1,
        ray_predict_max_replicas=4,
        ray_predict_target_ongoing_requests=8,
    )

    options = replica_options("Predict", settings)

    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8.0,
    }
    assert options["max_ongoing_requests"] == settings.ray_predict_max_ongoing_requests


def test_build_app_from_config_args(default_bundle: Path):
    gateway = build_app({"model": str(default_bundle), "ray_explain_replicas": "2"})
    ingress = gateway._bound_deployment  # Ray keeps the bound deployment and its arguments

    assert ingress.name == "Gateway"
    settings, predict, explain, board, jobs = (ingress.init_args[0], *ingress.init_args[1:])
    assert settings.ray_explain_replicas == 2 and settings.model == default_bundle
    deployments = {
        app._bound_deployment.name: app._bound_deployment for app in (predict, explain, board, jobs)
    }
    assert set(deployments) == {"Predict", "Explain", "MetricsBoard", "JobBoard"}
    # one job board, which every replica and the gateway share, and which waits are not
    # limited by: a runner's watcher and every event stream hold a call open
    assert deployments["JobBoard"].num_replicas == 1
    assert deployments["JobBoard"].max_ongoing_requests >= 1024
    assert deployments["Explain"].num_replicas == 2
    assert deployments["Predict"].ray_actor_options["num_cpus"] == settings.ray_predict_cpus
    # a stopping replica checks for requests in progress every STOP_CHECK_S, not every 2 s
    for deployment in (ingress, *deployments.values()):
        waits = deployment._deployment_config.graceful_shutdown_wait_loop_s
        assert waits == STOP_CHECK_S, deployment.name
