"""GET /healthz, /readyz (no key needed) and /metrics."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.http.dependencies import RuntimeDep
from service.errors import ErrorBody, NotReady
from service.metrics import CONTENT_TYPE_LATEST
from service.http.schemas import Health

probes = APIRouter(tags=["probes"])  # no key: orchestrators probe them


@probes.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Health:
    runtime = getattr(request.app.state, "runtime", None)
    ready = await runtime.readiness() if runtime is not None else None
    return Health(status="alive", family_id=ready.family_id if ready is not None else None)


@probes.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}})
async def readyz(runtime: RuntimeDep) -> Health:
    ready = await runtime.readiness()
    if not ready.ready:
        raise NotReady(ready.detail or "model is loading", retry_after=5)
    return Health(status="ready", family_id=ready.family_id)


async def prometheus(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def add_metrics(routes: APIRouter) -> None:
    routes.add_api_route("/metrics", prometheus, methods=["GET"], tags=["probes"], response_class=Response,
                         responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
