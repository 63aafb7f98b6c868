"""What jobs do, for ``/metrics``: how many are in each state, how long they waited for a turn,
how long they ran, and how each ended."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.jobs.store import JobView
from service.observability.metrics import LATENCY_BUCKETS, PREFIX

JOB_BUCKETS = (*LATENCY_BUCKETS, 60, 120, 300)


class JobMetrics:
    """Registered in a registry; ``observe`` is the store's ``on_change``."""

    def __init__(self, registry: CollectorRegistry, counts: Callable[[], dict[str, int]]) -> None:
        registry.register(_JobCounts(counts))
        self.queue_wait = Histogram(
            f"{PREFIX}_job_queue_wait_seconds",
            "how long a job waited for an explanation turn before it ran",
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.run_time = Histogram(
            f"{PREFIX}_job_run_seconds",
            "how long a job ran, from its turn to its end (done, failed or cancelled)",
            ("method",),
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.ended = Counter(
            f"{PREFIX}_jobs_finished",
            "jobs that ended, by method and final state",
            ("method", "state"),
            registry=registry,
        )

    def observe(self, job: JobView, before: str | None) -> None:
        """Record a job's change of state (``before`` None: the job was just made)."""
        if job.state == before:
            return
        if job.state == "running":
            self.queue_wait.observe(job.queue_wait_s)
        if job.is_finished:
            if before == "running":
                self.run_time.labels(job.method).observe(job.elapsed_s)
            self.ended.labels(job.method, job.state).inc()


class _JobCounts(Collector):
    """The jobs held right now, by state, read from the store at scrape time."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_jobs",
            "jobs held by the service, by state (finished ones until they expire)",
            labels=["state"],
        )
        for state, count in self.counts().items():
            family.add_metric([state], count)
        return [family]
