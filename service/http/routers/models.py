"""GET|HEAD /models/{pref} (and under /families/{family_id}/): a preference's merged checkpoint."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response, StreamingResponse

from service.http.dependencies import RuntimeDep
from service.engine.downloads import NotModified
from service.engine.families import FamilyView
from service.http.routers import ERRORS, Naming, Responses, Tags
from service.http.routers.classify import PREFERENCE_SCHEMA

DOWNLOAD_RESPONSES: Responses = {200: {"content": {"application/octet-stream": {}}, "description": "safetensors checkpoint"},
                      304: {"description": "not modified (If-None-Match)"}, **ERRORS}


def add_routes(routes: APIRouter, naming: Naming) -> None:
    """This resource's routes for one naming of the family, added to `routes` (one router for all of them:
    every included router is one more step of each request's route matching)."""
    tags: Tags = ["models"]
    held = Depends(naming.family)

    @routes.head(naming.prefix + "/models/{pref:path}", tags=tags, response_class=Response, responses=DOWNLOAD_RESPONSES,
                 operation_id=naming.op("model_headers"), summary="Headers of the merged checkpoint (size, ETag)")
    @routes.get(naming.prefix + "/models/{pref:path}", tags=tags, response_class=Response, responses=DOWNLOAD_RESPONSES,
                operation_id=naming.op("download_model"))
    async def download(pref: Annotated[str, Path(json_schema_extra=PREFERENCE_SCHEMA)], request: Request,
                       runtime: RuntimeDep, family: FamilyView = held) -> Response:
        """The merged checkpoint theta(pref): `visual.*` tower weights, `heads.*`, metadata."""
        preference = family.preference(pref)
        cached = await runtime.checkpoint(family, preference, request.headers.get("if-none-match"))
        if isinstance(cached, NotModified):
            return Response(status_code=304, headers={"ETag": cached.etag, "X-Pmerge-Variant": cached.variant})
        headers = {"ETag": cached.etag, "Content-Length": str(cached.size),
                   "Content-Disposition": f'attachment; filename="{cached.filename}"',
                   "X-Pmerge-Preference": preference.canonical, "X-Pmerge-Variant": cached.variant}
        if request.method == "HEAD":
            cached.close()
            return Response(headers=headers, media_type="application/octet-stream")
        return StreamingResponse(cached.chunks(), headers=headers, media_type="application/octet-stream")

