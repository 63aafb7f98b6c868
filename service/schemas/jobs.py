"""A job's state, progress and result (``/jobs``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.schemas.common import ErrorDetail


class JobStatus(BaseModel):
    """A job (POST /jobs/{method}): where it stands and, once done, its answer."""

    id: str = Field(description="the job's id: GET /jobs/{id}")
    method: str = Field(description="the explanation method, or maximize")
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(ge=0, le=1, description="share of the work done (1 when done)")
    parameters: dict[str, Any] = Field(description="the method's parameters, as checked")
    created_at: float = Field(description="when the job was made (Unix time, s)")
    queue_wait_s: float = Field(description="time waiting for an explanation turn (so far)")
    elapsed_s: float = Field(description="time running (so far): 0 while queued")
    remaining_s: float | None = Field(
        description="estimated time until done, from progress so far; null while unknown"
    )
    error: ErrorDetail | None = Field(
        None, description="why the job failed or was cancelled (code and message)"
    )
    result: dict[str, Any] | None = Field(
        None,
        description="once done: the synchronous call's JSON answer (format=json); also on "
        "GET /jobs/{id}/result",
    )
