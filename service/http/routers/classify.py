"""POST /classify (and /families/{family_id}/classify): top-k labels per task under a preference."""
from __future__ import annotations

from typing import Annotated, Optional

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from models_store.preference import PREFERENCE_PATTERN

from service.http.classify import MAX_TOP_K, classification, select_tasks
from service.http.dependencies import RuntimeDep
from service.errors import ErrorBody, InvalidParameter, PayloadTooLarge, json_bytes
from service.engine.families import FamilyView
from service.http.schemas import ClassifyResponse
from service.http.routers import ERRORS, Naming, Tags

FILE_FIELDS = ("files", "file", "images", "image")
MULTIPART_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                             "description": "one or more images (field `file` is accepted too); at most "
                                            "PMERGE_MAX_FILES, each a PNG, JPEG, WebP, GIF, BMP, TIFF or PPM"}}}}}}}
# documented, not enforced here: the one parser checks the text and says what is wrong with it
PREFERENCE_SCHEMA = {"pattern": PREFERENCE_PATTERN}


async def read_uploads(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """The image parts of a multipart body (size already bounded by BodyLimitMiddleware)."""
    try:
        form = await request.form(max_files=max_files, max_fields=max_files + 16)
    except StarletteHTTPException as e:
        if str(e.detail).startswith("Too many"):  # Starlette's words for more parts than allowed
            raise PayloadTooLarge(f"{e.detail} (this server takes at most {max_files} files per request)") from None
        raise
    try:
        files = []
        for field in FILE_FIELDS:
            for value in form.getlist(field):
                if not isinstance(value, UploadFile):
                    raise InvalidParameter(f"form field {field!r} must be a file, got a text value")
                files.append((value.filename or field, await value.read()))
    finally:
        await form.close()
    if not files:
        kind = request.headers.get("content-type", "no content type").split(";")[0]
        raise InvalidParameter(f"no image: send multipart/form-data with one or more file parts named "
                               f"'files' (or 'file'); got {kind}")
    return files


def add_routes(routes: APIRouter, naming: Naming) -> None:
    """This resource's routes for one naming of the family, added to `routes` (one router for all of them:
    every included router is one more step of each request's route matching)."""
    tags: Tags = ["inference"]
    held = Depends(naming.family)

    @routes.post(naming.prefix + "/classify", tags=tags, response_class=Response, responses=ERRORS | {200: {"model": ClassifyResponse},
                 404: {"model": ErrorBody}}, openapi_extra=MULTIPART_DOC, operation_id=naming.op("classify"))
    async def classify(
        request: Request,
        runtime: RuntimeDep,
        pref: Annotated[Optional[str], Query(description="preference, `0.2,0.8` or `digits:0.7,fashion:0.3`; "
                                                         "default: equal", json_schema_extra=PREFERENCE_SCHEMA)] = None,
        task: Annotated[Optional[list[str]], Query(description="task(s) to answer, repeated or comma-separated; "
                                                               "default: all")] = None,
        top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="labels per task (capped at its class count)")] = 5,
        family: FamilyView = held,
    ) -> Response:
        """Top-k labels per task for each uploaded image, under one preference."""
        # the cheap checks first: parameters, and room in the queue, before reading a (possibly large) body
        preference = family.preference(pref)
        tasks = select_tasks(task, family.tasks)
        await runtime.admit(family, 1)
        files = await read_uploads(request, runtime.settings.limits.max_files)
        logits = await runtime.classify(family, files, np.asarray(preference.weights, dtype=np.float32))
        answer = classification(family.family_id, preference.canonical, preference.as_dict(), logits, tasks,
                                family.classes, top_k, [name for name, _ in files])
        return Response(json_bytes(answer), media_type="application/json")

