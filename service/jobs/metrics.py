"""What jobs do, for ``/metrics``: how many are in each state, how long they waited for a turn,
how long they ran, how each ended, what finished jobs hold (results and their bytes, and how
many were forgotten to keep that bounded) and how many event streams are open."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.jobs.store import JobView, ResultsHeld
from service.observability.metrics import LATENCY_BUCKETS, PREFIX

JOB_BUCKETS = (*LATENCY_BUCKETS, 60, 120, 300)


class JobMetrics:
    """Registered in a registry; ``observe`` is the store's ``on_change``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        counts: Callable[[], dict[str, int]],
        results: Callable[[], ResultsHeld] | None = None,
        streams: Callable[[], int] | None = None,
    ) -> None:
        """``counts``: jobs by state; ``results``: what finished jobs hold; ``streams``: event
        streams open (each read at scrape time; None: not in this process)."""
        registry.register(_JobCounts(counts, results, streams))
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
    """The jobs held right now, by state, and what the finished ones hold, read from the store
    at scrape time."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        results: Callable[[], ResultsHeld] | None,
        streams: Callable[[], int] | None,
    ) -> None:
        self.counts, self.results, self.streams = counts, results, streams

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_jobs",
            "jobs held by the service, by state (finished ones until they expire)",
            labels=["state"],
        )
        for state, count in self.counts().items():
            family.add_metric([state], count)
        families: list[Metric] = [family]
        if self.results is not None:
            held = self.results()
            families += [
                GaugeMetricFamily(
                    f"{PREFIX}_job_results",
                    "finished jobs held (at most job_results_max)",
                    value=held.jobs,
                ),
                GaugeMetricFamily(
                    f"{PREFIX}_job_result_bytes",
                    "bytes of the results (JSON and PNG renders) finished jobs hold (at most "
                    "job_results_max_bytes)",
                    value=held.bytes,
                ),
                CounterMetricFamily(
                    f"{PREFIX}_job_results_evicted",
                    "finished jobs forgotten before they expired to make room for newer ones",
                    value=held.evicted,
                ),
            ]
        if self.streams is not None:
            families.append(
                GaugeMetricFamily(
                    f"{PREFIX}_job_event_streams",
                    "GET /jobs/{id}/events streams open now",
                    value=self.streams(),
                )
            )
        return families
