"""All configuration of the service, in one typed class.

Every field can be set through an environment variable ``CELEBXAI_<FIELD>`` (for example
``CELEBXAI_MODEL=models/other``), a ``.env`` file in the working directory, or a command-line
flag of ``python -m service`` (``--model``, ``--max-batch-size``, ...). List fields take a
comma-separated string. Routes receive the settings through ``SettingsDep`` (see ``deps``), so
tests build an app with ``create_app(Settings(...))`` instead of touching the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "CELEBXAI_"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "celebs8"
DEFAULT_MODELS_DIR = DEFAULT_MODEL.parent

Providers = Literal["auto", "cpu", "cuda"]


class Settings(BaseSettings):
    """Configuration of one service instance; see the configuration table of docs/operations.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    model: Path = Field(
        DEFAULT_MODEL,
        description="the default model bundle directory (meta.json, model.onnx, model.pt2): "
        "loaded at start, what a request without model= uses",
    )
    models_dir: Path = Field(
        DEFAULT_MODELS_DIR,
        description="folder of the other bundles served side by side (model=, GET /models): "
        "every subfolder holding a meta.json, known by its meta.json name",
    )
    max_loaded_models: int = Field(
        2,
        ge=1,
        description="bundles loaded at once, the default included: another is loaded on its "
        "first use and the least recently used one other than the default is unloaded beyond "
        "this (once its requests in progress end)",
    )
    open_set_target_frr: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="'none of the classes' threshold: the fraction of the classes' own faces "
        "it may reject (on the bundle's calibration faces), in [0, 1); unset = the bundle's",
    )
    evidence_dir: str | None = Field(
        None,
        description="folder of the training images (<class_id>/<file>) that GET /evidence "
        "serves thumbnails of (only files of the bundle's train split); unset = the data root "
        "the bundle's split.json records, relative to the working directory, where that "
        "folder exists; empty = no thumbnails",
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    providers: Providers = Field(
        "auto",
        description="ONNX Runtime execution provider: auto (CUDA when available, else CPU), "
        "cpu, or cuda (fail when CUDA is unavailable)",
    )
    precision: Literal["fp32", "int8", "auto"] = Field(
        "auto",
        description="ONNX graph that serves: fp32 (model.onnx), int8 (the bundle's "
        "model.int8.onnx from 'python -m training quantize'; not ready without it), or auto "
        "(INT8 when the bundle has it, its recorded accuracy gates passed and a load-time "
        "probe measures it at most 0.8 of FP32's CPU time on this CPU, else FP32); gradient "
        "methods use the FP32 twin (sampled ones bfloat16 where the CPU has it and a parity "
        "gate passes)",
    )
    threads: int = Field(
        0,
        ge=0,
        description="intra-op threads for ONNX Runtime and torch (a gradient pass of one face "
        "runs on one); 0 = one per core",
    )
    max_batch_size: int = Field(
        32, ge=1, description="largest batch the dynamic batcher sends to the model"
    )
    batch_timeout_ms: float = Field(
        4.0,
        ge=0,
        description="how long the batcher waits for more requests after the first one (ms), "
        "while other admitted requests may still join it (a lone request never waits)",
    )
    max_in_flight: int = Field(
        256,
        ge=1,
        description="image requests processed at once; more are refused with 503 overloaded",
    )
    max_explanations: int = Field(
        2, ge=1, description="explanations (/saliency, /occlusion, /lime) computed at once"
    )
    explanation_queue: int = Field(
        8,
        ge=0,
        description="explanations waiting for a turn; more are refused with 503 overloaded "
        "(Retry-After), so that /predict stays fast",
    )
    max_passes_per_request: int = Field(
        64,
        ge=2,
        description="forward passes one explanation (synchronous or job) may plan; more is "
        "refused with 422 too_costly (docs/explanations.md lists each method's passes)",
    )
    max_jobs: int = Field(
        16,
        ge=1,
        description="explanation jobs (POST /jobs/...) queued or running at once, in all; more "
        "are refused with 429 too_many_jobs",
    )
    max_jobs_per_key: int = Field(
        8,
        ge=1,
        description="explanation jobs queued or running at once per API key (the web page runs "
        "its five anytime methods as jobs at once)",
    )
    job_ttl_s: float = Field(
        600.0, gt=0, description="a finished job (and its result) is kept this long (s)"
    )
    job_event_interval_s: float = Field(
        0.25,
        gt=0,
        description="GET /jobs/{id}/events sends at most one progress event per this many s",
    )
    job_results_max: int = Field(
        512,
        ge=1,
        description="finished jobs kept at once (done, failed or cancelled); a job that "
        "finishes beyond it makes the oldest finished one forgotten (404 unknown_job)",
    )
    job_results_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="bytes of finished jobs' results (JSON and PNG renders) kept at once; a "
        "result beyond it makes the oldest finished jobs forgotten first (one larger than it "
        "alone fails the job with result_too_large)",
    )
    job_streams_per_job: int = Field(
        8,
        ge=1,
        description="GET /jobs/{id}/events streams open at once on one job; one more is 429 "
        "too_many_streams",
    )
    job_streams_per_key: int = Field(
        32,
        ge=1,
        description="GET /jobs/{id}/events streams open at once per API key, over all its "
        "jobs; one more is 429 too_many_streams",
    )
    write_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a client that reads nothing of a response for this long while the server "
        "has data waiting for it (an event stream, a large PNG) is dropped (s)",
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="largest accepted upload (bytes); larger gives 413"
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="largest accepted width x height, checked before decoding; larger gives 413",
    )
    min_image_side: int = Field(
        16, ge=1, description="smallest accepted width and height (pixels); smaller gives 422"
    )
    max_decodes: int = Field(
        0,
        ge=0,
        description="images of max_image_pixels decoded and processed at once (smaller ones "
        "share the same budget of max_decodes x max_image_pixels pixels; more wait); "
        "0 = one per core",
    )
    face_search_cache: int = Field(
        256,
        ge=0,
        description="photos whose face search results are kept, by a digest of their pixels, so "
        "that /predict and the explanations of the same photo search it once (concurrent "
        "requests wait for the search in progress); 0 = off",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:8000", "http://127.0.0.1:8000"],
        description="origins allowed by CORS (comma-separated); empty disables CORS",
    )
    api_key: SecretStr | None = Field(
        None,
        description="when set, image endpoints, jobs and /model require it in the X-API-Key "
        "header; several keys (one per client) separated by commas: a job is visible only "
        "with the key that made it",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log level of the service and uvicorn"
    )
    access_log: bool = Field(
        True,
        description="log one line per request (uvicorn access log; values of key-like query "
        "parameters are redacted)",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="an idle kept-alive connection is closed after this long (s)"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request's line and headers must arrive within this long of its first "
        "byte (of the connection opening, for its first request); else 408 and close (s)",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request body that stalls (no byte) for this long is answered 408 and "
        "its connection closed (s)",
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="largest request line plus headers (bytes); larger gives 431 and a close",
    )
    min_body_rate_bytes_s: float = Field(
        1024.0,
        gt=0,
        description="once a request body has taken body_timeout_s, it must have come at least "
        "this fast on average (bytes/s; time the server is not reading excluded); slower gives "
        "408 and a close",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="open client connections at most; one beyond is answered 503 overloaded "
        "(Retry-After) and closed as it opens",
    )
    # Ray Serve host (``python -m service --ray``; service.scaleout). Unused by the default host.
    ray_address: str | None = Field(
        None,
        description="with --ray: the Ray cluster to join (e.g. ray://head:10001 or auto); none = "
        "RAY_ADDRESS when set, else start a local Ray instance",
    )
    ray_num_cpus: int = Field(
        0, ge=0, description="with --ray: CPUs of the local Ray instance it starts; 0 = all cores"
    )
    ray_request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="with --ray: the longest a request may take in a Predict or Explain replica "
        "(queueing included); longer gives 503 overloaded (s)",
    )
    ray_predict_replicas: int = Field(
        1,
        ge=1,
        description="with --ray: replicas of the Predict deployment (/predict); the minimum "
        "when ray_predict_max_replicas enables autoscaling",
    )
    ray_predict_max_replicas: int = Field(
        0,
        ge=0,
        description="with --ray: above ray_predict_replicas, autoscale Predict up to this many "
        "replicas; 0 = a fixed count",
    )
    ray_predict_target_ongoing_requests: float = Field(
        16.0,
        gt=0,
        description="with --ray: the ongoing requests per Predict replica that autoscaling aims at",
    )
    ray_predict_cpus: float = Field(
        0.5, ge=0, description="with --ray: CPUs Ray reserves for each Predict replica"
    )
    ray_predict_max_ongoing_requests: int = Field(
        64,
        ge=1,
        description="with --ray: requests one Predict replica works on at once (its batcher "
        "batches them); more wait in the queue",
    )
    ray_predict_max_queued_requests: int = Field(
        128,
        ge=0,
        description="with --ray: /predict requests waiting for a replica; more are refused with "
        "503 overloaded (Retry-After)",
    )
    ray_explain_replicas: int = Field(
        1,
        ge=1,
        description="with --ray: replicas of the Explain deployment (explanations and "
        "/insight/maximize); the minimum when ray_explain_max_replicas enables autoscaling",
    )
    ray_explain_max_replicas: int = Field(
        0,
        ge=0,
        description="with --ray: above ray_explain_replicas, autoscale Explain up to this many "
        "replicas; 0 = a fixed count",
    )
    ray_explain_target_ongoing_requests: float = Field(
        2.0,
        gt=0,
        description="with --ray: the ongoing requests per Explain replica that autoscaling aims at",
    )
    ray_explain_cpus: float = Field(
        1.0, ge=0, description="with --ray: CPUs Ray reserves for each Explain replica"
    )
    ray_explain_max_ongoing_requests: int = Field(
        2,
        ge=1,
        description="with --ray: explanations one Explain replica computes at once",
    )
    ray_explain_max_queued_requests: int = Field(
        8,
        ge=0,
        description="with --ray: explanations waiting for an Explain replica; more are refused "
        "with 503 overloaded (Retry-After), so that /predict stays fast",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_an_error(cls, value: object) -> object:
        # An empty CELEBXAI_API_KEY (e.g. from an unset shell variable) would otherwise
        # silently turn authentication off.
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                f"the API key is empty; unset {ENV_PREFIX}API_KEY (and drop --api-key) to serve "
                "without authentication, or give a non-empty key"
            )
        if isinstance(value, str) and not all(key.strip() for key in value.split(",")):
            raise ValueError("an API key in the comma-separated list is empty")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings read from the environment (cached: read once)."""
    return Settings()
