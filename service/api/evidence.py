"""GET /evidence/{class_id}/{file}: a thumbnail of a training face that ``/predict`` names.

Only files of the bundle's train split are served, found by looking the class and the file
name up in the split (``TrainingFaces.row``): a name the split does not list is refused before
any path is made, so no request can reach another file. The images come from the folder of the
``evidence_dir`` setting; the bundle never carries them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import ModelDep, api_key_guard
from service.api.placement import ON_GATEWAY
from service.errors import EvidenceUnavailable, UnknownTrainingFace
from service.schemas.common import error_responses
from service.schemas.predict import EVIDENCE_PATH

JPEG_MEDIA_TYPE = "image/jpeg"
# A listed file's thumbnail changes only with the data folder; private: behind an API key.
CACHE_HEADERS = {"Cache-Control": "private, max-age=86400"}

router = APIRouter(tags=["predict"], dependencies=[Depends(api_key_guard), ON_GATEWAY])


@router.get(
    EVIDENCE_PATH + "/{class_id}/{file}",
    summary="Thumbnail of a training face",
    response_class=Response,
    responses={
        200: {
            "content": {JPEG_MEDIA_TYPE: {}},
            "description": "JPEG, at most 112 px on its long side",
        },
        **error_responses(401, 404, 503),
    },
)
async def training_face(
    model: ModelDep,
    class_id: Annotated[str, Path(description="class id, as /predict's evidence names it")],
    file: Annotated[str, Path(description="the training image's file name (e.g. 1234.png)")],
) -> Response:
    """A thumbnail of a training face of the bundle's train split, as ``/predict``'s
    ``open_set.evidence`` links it: 404 ``unknown_training_face`` for anything the split does
    not list, 404 ``evidence_unavailable`` where the service has no training images."""
    faces = model.training_faces
    if faces is None:
        raise EvidenceUnavailable(
            "the served bundle names no training faces (no open-set gallery, or no split.json)"
        )
    ids = [c.id for c in model.meta.classes]
    if class_id not in ids:
        raise UnknownTrainingFace(f"no class {class_id!r}; the classes are {', '.join(ids)}")
    row = faces.row(ids.index(class_id), file)
    if row is None:
        raise UnknownTrainingFace(
            f"the bundle's train split lists no file {file!r} of class {class_id!r}; only the "
            "training faces /predict names have thumbnails"
        )
    if faces.images is None:
        raise EvidenceUnavailable(faces.images_note)
    try:
        jpeg = await run_in_threadpool(faces.thumbnail, row)
    except OSError as exc:
        raise EvidenceUnavailable(
            f"the training image {faces.files[row]} cannot be read from the evidence folder "
            f"({type(exc).__name__}); is it the bundle's training data?"
        ) from exc
    return Response(jpeg, media_type=JPEG_MEDIA_TYPE, headers=CACHE_HEADERS)
