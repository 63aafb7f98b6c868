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
  per change, at most one per ``job_event_interval_s``, the last when the job ends or is
  forgotten (state ``gone``), made once for all its readers (``jobs.events``);
- ``DELETE /jobs/{id}``: cancel (the work stops at its next batch), or forget a finished job.

A job is visible only with the API key that made it (another key, like an expired or unknown
id, is 404 ``unknown_job``); too many unfinished jobs are 429 ``too_many_jobs``, too many
open event streams 429 ``too_many_streams``.

What a job holds while it waits is bounded: the model input and the upload's facts, never the
decoded upload. A job asked for a PNG (``format=png`` or ``overlay``, drawn the size of the
upload) keeps the upload's compressed bytes and decodes them again to render, holding the
upload's pixels in the app's pixel budget (``state.decodes``) while it does. A result is
serialised once when the job finishes; every read sends those bytes (``status_json``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from service import explanations
from service.api.deps import (
    ExplanationCacheDep,
    ImageDep,
    ModelDep,
    ModelInputDep,
    OwnerDep,
    StateDep,
    api_key_guard,
    in_flight_slot,
)
from service.api.explain import (
    ContrastQuery,
    FormatQuery,
    QualityQuery,
    TargetQuery,
    question_of,
)
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
from service.explain import Heatmap
from service.explain.base import MethodCall
from service.explain.quality import PASSES as QUALITY_PASSES
from service.faces.aligned import AlignedFace
from service.http.head_requests import HEAD_KEY
from service.insight.inspector import InspectedModel
from service.intake.images import ImageLimits, decode_pixels, read_header
from service.jobs.events import Subscription
from service.jobs.runner import JobWork, Publish
from service.jobs.store import JobResult, JobView
from service.render.upload import PNG_MEDIA_TYPE, Format, render_png
from service.schemas.common import error_responses
from service.schemas.jobs import JobStatus
from service.state import ServiceState

EVENT_STREAM = "text/event-stream"
EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
JSON_MEDIA_TYPE = "application/json"
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
    responses={**ACCEPTED, **error_responses(401, 404, 422, 429, 503)},
    dependencies=[Depends(in_flight_slot), ON_EXPLAIN],
)
async def maximize_job(
    state: StateDep,
    owner: OwnerDep,
    inspector: InspectorDep,
    query: Annotated[MaximizeQuery, Query()],
) -> Response:
    objective = objective_of(inspector, query)
    params = maximize_params(query)

    def compute(cancellation: Cancellation, publish: Publish) -> Any:
        return inspector.synthesize(objective, params, cancellation)

    def finish(value: Any) -> JobResult:
        synthesis, cached = value
        png = encode_synthesis(synthesis.image)
        body = synthesis_response(query, params, synthesis, cached, png)
        return JobResult.of(body, {"png": png})

    planned = params.planned_passes()
    work = JobWork(compute, finish, planned)
    return await _start(state, owner, "maximize", params.model_dump(), work, inspector.model)


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
    file: Annotated[UploadFile, File(description="the image: JPEG, PNG, WebP or BMP")],
    target: TargetQuery = None,
    contrast: ContrastQuery = None,
    format: FormatQuery = "json",
    quality: QualityQuery = None,
) -> Response:
    question = question_of(model, target, contrast, call.explainer)
    graded = explanations.wants_quality(call, quality)
    interval = state.settings.job_event_interval_s
    upload = explanations.UploadFacts.of(image)  # the closures below never see ``image``
    renderer = None if format == "json" else await _png_renderer(state, file, format, upload)

    def work(cancellation: Cancellation, publish: Publish) -> explanations.Explanation:
        shown = explanations.PartialMaps(upload, inputs, call, interval, publish, question)
        return explanations.explain(
            model, inputs, call, question, cache, cancellation, shown.report, graded
        )

    def finish(explanation: explanations.Explanation) -> JobResult:
        body = explanations.json_answer(model, upload, inputs, explanation)
        if explanation.quality is not None:
            state.metrics.verdicts.labels(call.name, explanation.quality.verdict).inc()
        renders: dict[str, bytes] = {}
        if renderer is not None:
            renders[format] = renderer(inputs.face.aligned, explanation.heatmap)
        summary = {"quality": body.quality.model_dump(mode="json") if body.quality else None}
        return JobResult.of(body, renders, explanations.answer_headers(explanation), summary)

    side = (int(inputs.x.shape[1]), int(inputs.x.shape[2]))
    planned = call.planned_passes(side) + (QUALITY_PASSES if graded else 0)
    work_plan = JobWork(work, finish, planned)
    return await _start(state, owner, call.name, shown_params(call), work_plan, model)


@router.get(
    "/{job_id}",
    summary="A job's state, progress and, once done, its result",
    response_model=JobStatus,
    responses=error_responses(401, 404),
    dependencies=[ON_GATEWAY],
)
async def job_status(state: StateDep, owner: OwnerDep, job_id: str) -> Response:
    return _status_response(await state.jobs.get(job_id, owner))


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
    media_type = JSON_MEDIA_TYPE if format == "json" else PNG_MEDIA_TYPE
    return Response(content, media_type=media_type, headers=headers)


@router.get(
    "/{job_id}/events",
    summary="A job's progress as Server-Sent Events",
    description="`text/event-stream`: one `data:` line of JSON per change (`state`, "
    "`progress`, `elapsed_s`, `remaining_s`, and `heatmap`, `error` when there), at most one "
    "per `job_event_interval_s` (a reader slower than that gets the newest state, not every "
    "one), a comment line every 15 s while nothing changes, and a last event, after which the "
    "stream closes: the job's end (`done`, `failed` or `cancelled`), or `gone` with an "
    "`error` (`unknown_job`) when the job was forgotten first (deleted again, expired, or "
    "evicted by newer results). At most `job_streams_per_job` streams per job and "
    "`job_streams_per_key` per API key are open at once (one more: 429 too_many_streams); "
    "a client that reads nothing for `write_timeout_s` is disconnected.",
    responses={
        200: {"content": {EVENT_STREAM: {}}, "description": "the event stream"},
        **error_responses(401, 404, 429),
    },
    response_class=StreamingResponse,
    dependencies=[ON_GATEWAY],
)
async def job_events(request: Request, state: StateDep, owner: OwnerDep, job_id: str) -> Response:
    job = await state.jobs.get(job_id, owner)
    if request.scope.get(HEAD_KEY):  # the stream's headers, without holding one of its places
        return Response(media_type=EVENT_STREAM, headers=EVENT_STREAM_HEADERS)
    return EventStreamResponse(state.job_events.subscribe(job, owner))


@router.delete(
    "/{job_id}",
    summary="Cancel a job, or forget a finished one",
    description="An unfinished job is cancelled: its work stops at its next batch and its "
    "state becomes `cancelled` (kept until it expires). A finished job is forgotten at once.",
    response_model=JobStatus,
    responses=error_responses(401, 404),
    dependencies=[ON_GATEWAY],
)
async def delete_job(state: StateDep, owner: OwnerDep, job_id: str) -> Response:
    return _status_response(await state.jobs.delete(job_id, owner))


async def _start(
    state: ServiceState,
    owner: str,
    method: str,
    parameters: dict[str, Any],
    work: JobWork,
    model: InspectedModel,
) -> Response:
    """Make the job and start its work, which holds ``model`` until it ends (the request's
    hold ends with this 202): a job never fails because its model was unloaded."""
    job = await state.jobs.create(owner, method, parameters)
    if state.registry is not None:
        work = replace(work, release=state.registry.hold(model).release)
    state.job_runner.start(job, work)
    return _status_response(job, status_code=202, headers={"Location": f"/jobs/{job.id}"})


def _status_response(job: JobView, **kwargs: Any) -> Response:
    return Response(status_json(job), media_type=JSON_MEDIA_TYPE, **kwargs)


def status_json(job: JobView) -> bytes:
    """The job's ``JobStatus`` as JSON, its result (once done) spliced in as the bytes the store
    keeps: a poll of a finished job costs a copy, not a serialisation of its heatmap."""
    head = status_of(job).model_dump_json(exclude={"result"}).encode()
    result = job.result_json if job.state == "done" and job.result_json is not None else b"null"
    return b"".join((head[:-1], b',"result":', result, b"}"))


def status_of(job: JobView) -> JobStatus:
    """The job's status without its result (``status_json`` adds it)."""
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
    )


class EventStreamResponse(StreamingResponse):
    """A job's events for one reader; its place among the job's streams is given back when
    the response ends, however it ends (the job's end, a hang-up, a dropped connection)."""

    def __init__(self, subscription: Subscription) -> None:
        super().__init__(
            subscription.events(), media_type=EVENT_STREAM, headers=EVENT_STREAM_HEADERS
        )
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.subscription.close()


Renderer = Callable[[AlignedFace, Heatmap], bytes]


async def _png_renderer(
    state: ServiceState, file: UploadFile, fmt: Format, upload: explanations.UploadFacts
) -> Renderer:
    """How the job draws its ``fmt`` PNG once its map is ready: from the upload's compressed
    bytes (read again from the request's spooled file: at most ``max_upload_bytes``), decoded
    again on the job's worker thread while holding the upload's pixels in the app's budget."""
    await file.seek(0)
    data = await file.read()
    loop = asyncio.get_running_loop()
    limits = ImageLimits.from_settings(state.settings)
    width, height = upload.size
    pixels = width * height

    def render(aligned: AlignedFace, heatmap: Heatmap) -> bytes:  # on a worker thread
        asyncio.run_coroutine_threadsafe(state.decodes.acquire(pixels), loop).result()
        try:
            image = decode_pixels(read_header(data, limits))
            return render_png(fmt, image.rgb, aligned, heatmap)
        finally:
            loop.call_soon_threadsafe(state.decodes.release, pixels)

    return render
