"""What one app instance holds between requests (``app.state.service``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from service.common.admission import ExplanationGate, InFlightLimiter
from service.intake.pixel_budget import PixelBudget
from service.jobs.events import EventStreams
from service.jobs.metrics import JobMetrics
from service.jobs.runner import JobRunner
from service.jobs.store import Jobs, JobStore
from service.observability.metrics import FaceSearchMetrics, ServiceMetrics
from service.settings import Settings

if TYPE_CHECKING:
    from service.common.lru import LruCache
    from service.inference.model import ServingModel
    from service.inference.registry import ModelRegistry
    from service.insight.inspector import Inspector

Phase = Literal["loading", "ready", "failed", "stopped"]


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    model: ServingModel | None = None
    """the default model, once loaded (``registry`` has the others)"""
    registry: ModelRegistry | None = None
    """every model served (``model=``, ``GET /models``); made once the default is loaded"""
    phase: Phase = "loading"
    reason: str = "the model bundle is loading"
    limiter: InFlightLimiter = field(init=False)
    explanations: ExplanationGate = field(init=False)
    decodes: PixelBudget = field(init=False)
    jobs: Jobs = field(init=False)
    job_runner: JobRunner = field(init=False)
    job_events: EventStreams = field(init=False)
    # Made by the lifespan: the explanation result cache (before loading) and the default
    # model's insight inspector (once it is loaded); the other models' inspectors are made on
    # first use (``inspector_of``) and go with their model.
    explanation_cache: LruCache | None = None
    grade_cache: LruCache | None = None
    inspector: Inspector | None = None

    def __post_init__(self) -> None:
        self.limiter = InFlightLimiter(self.settings.max_in_flight)
        self.explanations = ExplanationGate(
            self.settings.max_explanations, self.settings.explanation_queue
        )
        self.metrics.watch(self._face_search_metrics)
        self.decodes = PixelBudget.from_settings(self.settings, self.metrics.registry)
        store = JobStore.from_settings(self.settings)
        self.use_job_store(store)
        store.on_change = JobMetrics(
            self.metrics.registry,
            store.counts,
            store.results_held,
            streams=lambda: self.job_events.open,
        ).observe

    def inspector_of(self, model: ServingModel) -> Inspector | None:
        """The insight inspector of ``model`` (made on first use, sharing the default's cache of
        syntheses, whose keys name the model); None before the default model is loaded."""
        if self.inspector is None:
            return None
        if self.inspector.model is model:
            return self.inspector
        if model.inspector is None:
            from service.insight.inspector import Inspector

            model.inspector = Inspector(model, self.inspector.syntheses)
        return model.inspector

    def use_job_store(self, store: Jobs) -> None:
        """Keep jobs in ``store`` (in Ray mode, the one every replica shares)."""
        self.jobs = store
        self.job_events = EventStreams(
            store,
            interval=self.settings.job_event_interval_s,
            per_job=self.settings.job_streams_per_job,
            per_key=self.settings.job_streams_per_key,
        )
        self.job_runner = JobRunner(
            store, self.explanations, on_pass=self.metrics.explanation_batches.inc
        )

    def _face_search_metrics(self) -> FaceSearchMetrics | None:
        """The loaded model's face finder's metrics (it is made with the model, after the
        registry); None before loading or for a bundle without face detection."""
        faces = self.model.faces if self.model is not None else None
        return faces.metrics if faces is not None else None
