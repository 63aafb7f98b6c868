"""Jobs: long explanations and syntheses run in the background, with progress you can watch.

- ``POST /jobs/{method}``: the same upload and parameters as ``POST /explain/{method}`` (and
  ``POST /jobs/maximize``: those of ``GET /insight/maximize``); every check the synchronous call
  makes is made first, with the same 4xx answers; then 202 with the job's status and
  ``Location: /jobs/{id}``. The job is that call run later (``service.explanations``), and
  renders what the call would: the JSON answer, and the PNG of ``format=png`` or ``overlay``
  when that is asked for;
- ``GET /jobs/{id}``: state (queued, running, done, failed, cancelled), progress 0..1, times, and
  once done the synchronous call's JSON answer;
- ``GET /jobs/{id}/result``: that answer alone, as JSON or as the PNG the job was asked for
  (409 ``job_not_done`` before, and for a PNG the job was not asked to render);
- ``GET /jobs/{id}/events``: Server-Sent Events, one ``data:`` line of JSON (state, progress)
  per change, at most one per ``job_event_interval_s``, the last when the job ends;
- ``DELETE /jobs/{id}``: cancel (the work stops at its next batch), or forget a finished job.

A job is visible only with the API key that made it (another key, like an expired or unknown
id, is 404 ``unknown_job``); too many unfinished jobs are 429 ``too_many_jobs``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service import explanations
from service.api.deps import (
    ExplanationCacheDep,
    ImageDep,
    ModelDep,
    ModelInputDep,
    OwnerDep,
    StateDep,
    api_key_guard,
    class_index,
    in_flight_slot,
)
from service.api.explain import FormatQuery, TargetQuery
from service.api.insight import (
    InspectorDep,
    MaximizeQuery,
    encode_synthesis,
    maximize_params,
    objective_of,
    synthesis_response,
)
from service.api.method_params import method_call, shown_params
from service.api.placement import ON_EXPLAIN, ON_GATEWAY
from service.common.cancellation import Cancellation
from service.explain.base import MethodCall
from service.jobs.runner import JobWork, Publish
from service.jobs.store import JobResult, Jobs, JobView
from service.render.upload import NEGLIGIBLE_HEADER, PNG_MEDIA_TYPE, render_png
from service.schemas.common import error_responses
from service.schemas.jobs import JobStatus
from service.state import ServiceState

EVENT_STREAM = "text/event-stream"
KEEPALIVE_S = 15.0
router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(api_key_guard)])
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"description": "the job was made; `Location` is its URL", "model": JobStatus}
}


@router.post(
    "/maximize",
    status_code=202,
    summary="Synthesise an image as a job",
    description="The parameters of GET /insight/maximize; the job's result is its answer "
    "(`format=json` or `png` on GET /jobs/{id}/result).",
    responses={**ACCEPTED, **error_responses(401, 422, 429, 503)},
    dependencies=[Depends(in_flight_slot), ON_EXPLAIN],
)
async def maximize_job(
    state: StateDep,
    owner: OwnerDep,
    inspector: InspectorDep,
    query: Annotated[MaximizeQuery, Query()],
) -> JSONResponse:
    objective = objective_of(inspector, query)
    params = maximize_params(query)

    def compute(cancellation: Cancellation, publish: Publish) -> Any:
        return inspector.synthesize(objective, params, cancellation)

    def finish(value: Any) -> JobResult:
        synthesis, cached = value
        png = encode_synthesis(synthesis.image)
        body = synthesis_response(query, params, synthesis, cached, png)
        return JobResult(body.model_dump(mode="json"), {"png": png})

    planned = params.planned_passes()
    return await _start(
        state, owner, "maximize", params.model_dump(), JobWork(compute, finish, planned)
    )


@router.post(
    "/{method}",
    status_code=202,
    summary="Run an explanation as a job",
    description="The upload and parameters of POST /explain/{method}, checked the same way "
    "before any work starts; the job's result is that call's answer: JSON, and the PNG of "
    "`format=png` or `overlay` when that is asked for here (GET /jobs/{id}/result).",
    responses={**ACCEPTED, **error_responses(400, 401, 404, 413, 415, 422, 429, 503)},
    dependencies=[Depends(in_flight_slot), ON_EXPLAIN],
)
async def explain_job(
    state: StateDep,
    owner: OwnerDep,
    call: Annotated[MethodCall, Depends(method_call)],
    model: ModelDep,
    image: ImageDep,
    inputs: ModelInputDep,
    cache: ExplanationCacheDep,
    target: TargetQuery = None,
    format: FormatQuery = "json",
) -> JSONResponse:
    target_index = None if target is None else class_index(model, target)
    interval = state.settings.job_event_interval_s

    def work(cancellation: Cancellation, publish: Publish) -> explanations.Explanation:
        shown = explanations.PartialMaps(image, inputs, call, interval, publish)
        return explanations.explain(
            model, inputs, call, target_index, cache, cancellation, shown.report
        )

    def finish(explanation: explanations.Explanation) -> JobResult:
        body = explanations.json_answer(model, image, inputs, explanation)
        heatmap = explanation.heatmap
        renders: dict[str, bytes] = {}
        if format != "json":
            renders[format] = render_png(format, image.rgb, inputs.face.aligned, heatmap)
        negligible = {NEGLIGIBLE_HEADER: str(heatmap.negligible).lower()}
        return JobResult(body.model_dump(mode="json"), renders, negligible)

    side = (int(inputs.x.shape[1]), int(inputs.x.shape[2]))
    work_plan = JobWork(work, finish, call.planned_passes(side))
    return await _start(state, owner, call.name, shown_params(call), work_plan)


@router.get(
    "/{job_id}",
    summary="A job's state, progress and, once done, its result",
    responses=error_responses(401, 404),
    dependencies=[ON_GATEWAY],
)
async def job_status(state: StateDep, owner: OwnerDep, job_id: str) -> JobStatus:
    return status_of(await state.jobs.get(job_id, owner))


@router.get(
    "/{job_id}/result",
    summary="A finished job's answer: JSON, or the PNG it was asked for",
    responses={
        200: {"content": {PNG_MEDIA_TYPE: {}}, "description": "JSON, or the PNG (png, overlay)"},
        **error_responses(401, 404, 409, 422),
    },
    dependencies=[ON_GATEWAY],
)
async def job_result(
    state: StateDep,
    owner: OwnerDep,
    job_id: str,
    format: Annotated[
        Literal["json", "png", "overlay"],
        Query(
            description="json, or the PNG the job rendered: the `format` (png or overlay) "
            "POST /jobs/{method} was asked for (maximize: png); another is 409 job_not_done"
        ),
    ] = "json",
) -> Response:
    content, headers = await state.jobs.render(job_id, owner, format)
    media_type = "application/json" if format == "json" else PNG_MEDIA_TYPE
    return Response(content, media_type=media_type, headers=headers)


@router.get(
    "/{job_id}/events",
    summary="A job's progress as Server-Sent Events",
    description="`text/event-stream`: one `data:` line of JSON per change (`state`, "
    "`progress`, `elapsed_s`, `remaining_s`), at most one per `job_event_interval_s`, a "
    "comment line every 15 s while nothing changes, and a last event when the job ends "
    "(done, failed or cancelled), after which the stream closes.",
    responses={
        200: {"content": {EVENT_STREAM: {}}, "description": "the event stream"},
        **error_responses(401, 404),
    },
    response_class=StreamingResponse,
    dependencies=[ON_GATEWAY],
)
async def job_events(state: StateDep, owner: OwnerDep, job_id: str) -> StreamingResponse:
    job = await state.jobs.get(job_id, owner)
    interval = state.settings.job_event_interval_s
    return StreamingResponse(
        _events(state.jobs, job, owner, interval),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.delete(
    "/{job_id}",
    summary="Cancel a job, or forget a finished one",
    description="An unfinished job is cancelled: its work stops at its next batch and its "
    "state becomes `cancelled` (kept until it expires). A finished job is forgotten at once.",
    responses=error_responses(401, 404),
    dependencies=[ON_GATEWAY],
)
async def delete_job(state: StateDep, owner: OwnerDep, job_id: str) -> JobStatus:
    return status_of(await state.jobs.delete(job_id, owner))


async def _start(
    state: ServiceState, owner: str, method: str, parameters: dict[str, Any], work: JobWork
) -> JSONResponse:
    job = await state.jobs.create(owner, method, parameters)
    state.job_runner.start(job, work)
    body = status_of(job).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": f"/jobs/{job.id}"})


def status_of(job: JobView) -> JobStatus:
    return JobStatus(
        id=job.id,
        method=job.method,
        state=job.state,
        progress=job.progress,
        parameters=job.parameters,
        created_at=job.created_at,
        queue_wait_s=job.queue_wait_s,
        elapsed_s=job.elapsed_s,
        remaining_s=job.remaining_s,
        error=job.error,
        result=job.result if job.state == "done" else None,
    )


async def _events(store: Jobs, job: JobView, owner: str, interval: float) -> AsyncIterator[str]:
    """The job's changes as SSE, at most one per ``interval`` s, until it ends."""
    yield _event(job)
    last_sent = time.monotonic()
    while not job.is_finished:
        newer = await store.wait(job.id, owner, job.version, KEEPALIVE_S)
        if newer.version == job.version:
            yield ": keepalive\n\n"
            continue
        wait = last_sent + interval - time.monotonic()
        if wait > 0 and not newer.is_finished:
            await asyncio.sleep(wait)
            newer = await store.get(job.id, owner)  # the newest state after the pause
        job = newer
        last_sent = time.monotonic()
        yield _event(job)


def _event(job: JobView) -> str:
    data: dict[str, Any] = {
        "state": job.state,
        "progress": job.progress,
        "elapsed_s": job.elapsed_s,
        "remaining_s": job.remaining_s,
    }
    if job.partial is not None:
        data["heatmap"] = job.partial
    if job.error is not None:
        data["error"] = job.error
    return f"id: {job.version}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
