"""The HTTP API: thin routes over Runtime (engine, downloads), JSON errors, metrics, optional API key.

    POST /classify?pref=&task=&top_k=   multipart images -> top-k labels per task
    GET|HEAD /models/{pref}             merged checkpoint (safetensors) for a preference
    GET /family                         what is served
    GET /families                       every family served; each also under /families/{id}/ with
                                        the three routes above (the unprefixed ones: the default)
    GET /healthz, /readyz, /metrics     probes and Prometheus text

Every error is `{"error": <code>, "detail": <message>}` with the status from `errors.py`.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import PurePath
from typing import Annotated, AsyncIterator, Callable, Optional

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models_store.preference import PREFERENCE_PATTERN, PreferenceError
from models_store.store import list_families

from .classify import MAX_TOP_K, image_results, select_tasks
from .errors import (ErrorBody, InvalidParameter, NotReady, PayloadTooLarge, ServiceError, Unauthorized, error_code,
                     json_bytes)
from .images import bombs_are_errors
from .limits import BodyLimitMiddleware
from .metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware
from .families import Served
from .runtime import Runtime
from .schemas import ClassifyResponse, FamilyOut, FamilySummary, Health, TaskOut
from .settings import Settings

log = logging.getLogger(__name__)

FILE_FIELDS = ("files", "file", "images", "image")
ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 413, 415, 422, 503)}


# --- dependencies -----------------------------------------------------------------------------

def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:  # the lifespan has not run yet
        raise NotReady("server is starting")
    return runtime


_bearer = HTTPBearer(auto_error=False, description="required when the server has PMERGE_API_KEY set")


def require_api_key(settings: Annotated[Settings, Depends(get_settings)],
                    credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(_bearer)]) -> None:
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if not key:
        return
    if credentials is None:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(credentials.credentials.encode(), key.encode()):
        raise Unauthorized("invalid API key")


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


# --- routes -------------------------------------------------------------------------------------

probes = APIRouter(tags=["probes"])
api = APIRouter(dependencies=[Depends(require_api_key)], responses={401: {"model": ErrorBody}})


@probes.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Health:
    runtime = getattr(request.app.state, "runtime", None)
    family = runtime.family if runtime is not None else None
    return Health(status="alive", family_id=family.family_id if family is not None else None)


@probes.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}})
async def readyz(runtime: RuntimeDep) -> Health:
    family = runtime.require_ready()
    return Health(status="ready", family_id=family.family_id)


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


def etag_matches(header: Optional[str], etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


async def default_family(runtime: RuntimeDep) -> AsyncIterator[Served]:
    """The default family, held for the request."""
    served = await runtime.acquire(None)
    try:
        yield served
    finally:
        runtime.release(served)


async def named_family(request: Request, runtime: RuntimeDep, family_id: Annotated[str, Path(
        description="a family id of GET /families; loaded on first use")]) -> AsyncIterator[Served]:
    """The family of the path, loaded on first use and held for the request (never evicted meanwhile)."""
    served = await runtime.acquire(family_id)
    try:
        await request.app.state.on_named_family(family_id)
        yield served
    finally:
        runtime.release(served)


DOWNLOAD_RESPONSES = {200: {"content": {"application/octet-stream": {}}, "description": "safetensors checkpoint"},
                      304: {"description": "not modified (If-None-Match)"}, **ERRORS}


def family_routes(served: Callable[..., AsyncIterator[Served]], operation_prefix: str, prefix: str = "") -> APIRouter:
    """classify, models/{pref} and family for one way of naming the family (the default, or a path's id).
    The prefix is part of each route's own path, so metrics and logs name the route a request took."""
    router = APIRouter(prefix=prefix)
    held = Depends(served)  # a default value, not an annotation: annotations are strings here
    op = lambda name: f"{operation_prefix}{name}"  # noqa: E731  (OpenAPI ids are unique per route)

    @router.post("/classify", response_model=ClassifyResponse, responses=ERRORS | {404: {"model": ErrorBody}},
                 openapi_extra=MULTIPART_DOC, tags=["inference"], operation_id=op("classify"))
    async def classify(
        request: Request,
        runtime: RuntimeDep,
        pref: Annotated[Optional[str], Query(description="preference, `0.2,0.8` or `digits:0.7,fashion:0.3`; "
                                                         "default: equal", json_schema_extra=PREFERENCE_SCHEMA)] = None,
        task: Annotated[Optional[list[str]], Query(description="task(s) to answer, repeated or comma-separated; "
                                                               "default: all")] = None,
        top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="labels per task (capped at its class count)")] = 5,
        family: Served = held,
    ) -> ClassifyResponse:
        """Top-k labels per task for each uploaded image, under one preference."""
        # the cheap checks first: parameters, and room in the queue, before reading a (possibly large) body
        preference = family.family.preference(pref)
        tasks = select_tasks(task, family.family.tasks)
        family.engine.require_room(1)
        files = await read_uploads(request, runtime.settings.max_files)
        logits = await runtime.classify(family, files, preference.tensor())
        classes = {t.name: t.classes for t in family.family.manifest.tasks}
        return ClassifyResponse(family_id=family.family_id, preference=preference.canonical,
                                weights=preference.as_dict(),
                                results=image_results(logits, tasks, classes, top_k, [name for name, _ in files]))

    @router.head("/models/{pref:path}", response_class=Response, tags=["models"], responses=DOWNLOAD_RESPONSES,
                 operation_id=op("model_headers"), summary="Headers of the merged checkpoint (size, ETag)")
    @router.get("/models/{pref:path}", response_class=Response, tags=["models"], responses=DOWNLOAD_RESPONSES,
                operation_id=op("download_model"))
    async def download(pref: Annotated[str, Path(json_schema_extra=PREFERENCE_SCHEMA)], request: Request,
                       runtime: RuntimeDep, family: Served = held) -> Response:
        """The merged checkpoint theta(pref): `visual.*` tower weights, `heads.*`, metadata."""
        preference = family.family.preference(pref)
        etag = family.downloads.etag(preference)
        if etag_matches(request.headers.get("if-none-match"), etag):  # content is a pure function of the key
            return Response(status_code=304, headers={"ETag": etag})
        cached = await runtime.checkpoint(family, preference)
        headers = {"ETag": cached.etag, "Content-Length": str(cached.size),
                   "Content-Disposition": f'attachment; filename="{cached.filename}"',
                   "X-Pmerge-Preference": preference.canonical}
        if request.method == "HEAD":
            cached.close()
            return Response(headers=headers, media_type="application/octet-stream")
        return StreamingResponse(cached.chunks(), headers=headers, media_type="application/octet-stream")

    @router.get("/family", response_model=FamilyOut, responses={503: {"model": ErrorBody}, 404: {"model": ErrorBody}},
                tags=["models"], operation_id=op("family_info"))
    async def family_info(family: Served = held) -> FamilyOut:
        return family_out(family.family.manifest)

    return router


def family_out(m) -> FamilyOut:
    # the zoo is a path on the server that trained the family: its name is what a client can use
    zoo = PurePath(m.zoo).name if m.zoo else None
    hyperparameters = {k: v for k, v in m.hyperparameters.items() if k != "zoo"}  # format 1 kept it there
    return FamilyOut(family_id=m.family_id, created=m.created, method=m.method, kind=m.kind,
                     kind_params=m.kind_params, zoo=zoo, rank=m.kind_params.get("rank"),
                     targets=m.kind_params.get("targets"),
                     tasks=[TaskOut(name=t.name, classes=t.classes) for t in m.tasks],
                     architecture=m.architecture, image_size=m.preprocess.image_size,
                     hyperparameters=hyperparameters, metrics=m.metrics)


@api.get("/families", response_model=list[FamilySummary], responses={503: {"model": ErrorBody}}, tags=["models"])
async def families(runtime: RuntimeDep) -> list[FamilySummary]:
    """Every family this service serves (newest first): which is the default, which are resident."""
    runtime.require_ready()
    known = runtime.families
    manifests = await asyncio.to_thread(list_families, runtime.settings.store)
    return [FamilySummary(family_id=m.family_id, method=m.method, kind=m.kind, created=m.created,
                          tasks=m.task_names, default=m.family_id == known.default_id,
                          resident=m.family_id in known.resident)
            for m in manifests if known.allows(m.family_id)]


api.include_router(family_routes(default_family, ""))
api.include_router(family_routes(named_family, "family_", prefix="/families/{family_id}"))


@api.get("/metrics", response_class=Response, tags=["probes"],
         responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# --- errors -------------------------------------------------------------------------------------

class JSONBody(JSONResponse):
    def render(self, content) -> bytes:
        return json_bytes(content)


def error_response(status: int, error: str, detail, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONBody(ErrorBody(error=error, detail=detail).model_dump(), status_code=status, headers=headers)


async def on_service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


async def on_preference_error(request: Request, exc: PreferenceError) -> JSONResponse:
    return error_response(422, "invalid_preference", str(exc))


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ())), e.get("msg", "invalid"))
                for e in exc.errors()]
    return error_response(422, "invalid_parameter", "; ".join(problems))


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if exc.status_code == 400 and request.url.path.endswith("/classify"):
        detail = f"malformed multipart body: {detail}"
    return error_response(exc.status_code, error_code(exc.status_code), detail, exc.headers)


class LastResortMiddleware:
    """Raw ASGI, just outside the routes' handlers: an exception nobody handled becomes a JSON 500.

    Starlette's own catch-all answers and then re-raises, and the server then resets the
    keep-alive connection; here the exception ends where it is answered, so the connection stays
    usable. A response already under way cannot change its status: that one is re-raised, and the
    server closes the connection (the client sees a short body).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            # last resort only: every expected bad input has its own status above
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            self.metrics.unhandled.inc()
            if started:
                raise
            await error_response(500, "internal_error", "internal server error")(scope, receive, send)


# --- the app ------------------------------------------------------------------------------------

@asynccontextmanager
async def lifespan(app: FastAPI):
    runtime = Runtime(app.state.settings, app.state.metrics)
    app.state.runtime = runtime
    loading = asyncio.create_task(_load(app, runtime))  # /healthz answers meanwhile; /readyz says 503
    if app.state.load_before_serving:  # Ray Serve: a replica takes traffic once its family is loaded
        await loading
        if runtime.error:
            raise RuntimeError(f"could not load the family: {runtime.error}")
    try:
        yield
    finally:
        if not loading.done():
            loading.cancel()
        runtime.close()


async def _load(app: FastAPI, runtime: Runtime) -> None:
    try:
        await asyncio.to_thread(runtime.load)
    except Exception as e:
        runtime.error = f"{type(e).__name__}: {e}"
        log.error("could not load the family: %s", runtime.error)
        # `pmerge serve` stops the server (exit 1, as Triton does); an embedding app keeps it up, and /readyz says why
        app.state.on_load_failure(runtime.error)


async def _nothing(family_id: str) -> None:
    return None


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or Settings()
    bombs_are_errors()
    app = FastAPI(title="pmerge", version="0.1.0", lifespan=lifespan, default_response_class=JSONBody,
                  docs_url=None, redoc_url=None,
                  description="Pareto-merged open_clip vision towers: any task trade-off, per request.")
    app.state.settings = settings
    app.state.on_load_failure = lambda error: None
    app.state.load_before_serving = False
    app.state.on_named_family = _nothing  # Ray Serve: tells Serve the replica holds that family
    add_offline_docs(app)
    app.state.metrics = Metrics()
    app.include_router(probes)
    app.include_router(api)
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(PreferenceError, on_preference_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    # outermost first at run time: metrics see every status, then the body bound, then the last resort
    app.add_middleware(LastResortMiddleware, metrics=app.state.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes,
                       max_inflight_bytes=settings.max_inflight_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def add_offline_docs(app: FastAPI) -> None:
    """/docs and /redoc with their scripts served from an installed package: no CDN on offline machines."""
    app.mount("/docs-static", StaticFiles(directory=str(resources.files("fastapi_offline") / "static")),
              name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="pmerge - Swagger UI",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title="pmerge - ReDoc",
                              redoc_js_url="/docs-static/redoc.standalone.js",
                              redoc_favicon_url="/docs-static/favicon.png", with_google_fonts=False)
