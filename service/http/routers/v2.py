"""The Open Inference Protocol's REST routes (service/http/v2.py): /v2, /v2/health/*, /v2/models/{model},
/v2/models/{model}/ready and /v2/models/{model}/infer, where the model is a family id of the store
(`default`: the default family). Errors are the protocol's `{"error": "..."}`; an inference joins
the same engine batches as /classify's."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.http.dependencies import RuntimeDep
from service.errors import BadRequest, ServiceError
from service.engine.families import FamilyView
from service.runtime.base import Runtime
from service.http.routers import Responses, Tags
from service.http.v2 import HEADER_LENGTH, IMAGE, ProtocolError, infer_response, model_metadata, parse_infer

DEFAULT = "default"
health = APIRouter(tags=["open inference protocol"])  # no key: orchestrators probe them
ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
RESPONSES: Responses = {s: ERROR for s in (400, 404, 503)}


def refused(e: ServiceError) -> JSONResponse:
    # the protocol knows 400, 404 and 503: what /classify says with 413, 415 or 422 is a bad request here
    status = 400 if e.status in (413, 415, 422) else e.status
    return JSONResponse({"error": e.detail}, status_code=status, headers=e.headers)


@asynccontextmanager
async def held(runtime: Runtime, model: str) -> AsyncIterator[FamilyView]:
    async with runtime.hold(None if model == DEFAULT else model) as family:
        yield family


@health.get("/v2/health/live")
async def live() -> dict:
    return {"live": True}


@health.get("/v2/health/ready", responses={503: ERROR})
async def ready(request: Request) -> Response:
    runtime: Optional[Runtime] = getattr(request.app.state, "runtime", None)
    state = await runtime.readiness() if runtime is not None else None
    if state is None or not state.ready:
        return JSONResponse({"error": (state and state.detail) or "server is starting"}, status_code=503,
                            headers={"Retry-After": "5"})
    return JSONResponse({"ready": True})


def add_routes(routes: APIRouter) -> None:
    tags: Tags = ["open inference protocol"]

    @routes.get("/v2", tags=tags)
    async def server_metadata(request: Request) -> dict:
        return {"name": "pmerge", "version": request.app.version, "extensions": ["binary_tensor_data"]}

    @routes.get("/v2/models/{model}", tags=tags, responses=RESPONSES)
    async def metadata(model: str, runtime: RuntimeDep) -> Response:
        try:
            async with held(runtime, model) as family:
                return JSONResponse(model_metadata(model, family.tasks, family.classes))
        except ServiceError as e:
            return refused(e)

    @routes.get("/v2/models/{model}/ready", tags=tags, responses=RESPONSES)
    async def model_ready(model: str, runtime: RuntimeDep) -> Response:
        try:
            async with held(runtime, model):
                return JSONResponse({"name": model, "ready": True})
        except ServiceError as e:
            return refused(e)

    @routes.post("/v2/models/{model}/infer", tags=tags, response_class=Response, responses=RESPONSES)
    async def infer(model: str, request: Request, runtime: RuntimeDep) -> Response:
        """IMAGE (BYTES [N]) and PREFERENCE (FP32 [N, K] or [1, K]) -> one FP32 [N, C] tensor of
        probabilities per task; JSON tensors or the binary tensor data extension."""
        try:
            async with held(runtime, model) as family:
                await runtime.admit(family, 1)
                body = await request.body()
                try:
                    parsed = parse_infer(body, request.headers.get(HEADER_LENGTH.lower()), family.tasks,
                                         runtime.settings.limits.max_files)
                except ProtocolError as e:
                    raise BadRequest(str(e)) from None
                files = [(f"{IMAGE}[{i}]", data) for i, data in enumerate(parsed.images)]
                logits = await runtime.classify(family, files, parsed.preferences)
                content, header_length = infer_response(model, parsed, logits)
        except ServiceError as e:
            return refused(e)
        headers = {} if header_length is None else {HEADER_LENGTH: str(header_length)}
        media = "application/json" if header_length is None else "application/octet-stream"
        return Response(content, media_type=media, headers=headers)

    @routes.api_route("/v2/models/{model}/versions/{version}{rest:path}", methods=["GET", "POST"], tags=tags,
                      responses={400: ERROR})
    async def versions(model: str, version: str, rest: str) -> Response:
        return JSONResponse({"error": f"pmerge families have no versions (asked for version {version!r} of "
                                      f"{model!r}): use /v2/models/{model}{rest}"}, status_code=400)

