"""The HTTP API: routers per resource over a Runtime, JSON errors, metrics, an optional API key.

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
import logging
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models_store.preference import PreferenceError

from service.http.dependencies import Hooks, default_family, named_family, require_api_key
from service.errors import ErrorBody, ServiceError, error_code, json_bytes
from service.engine.images import bombs_are_errors
from service.http.limits import BodyLimitMiddleware
from service.metrics import Metrics, MetricsMiddleware
from service.http.routers import Naming, classify, families, fronts, models, probes, v2
from service.runtime.base import Runtime
from service.runtime.local import LocalRuntime
from service.settings import Settings

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[Settings, Metrics], Runtime]


# --- errors -------------------------------------------------------------------------------------

class JSONBody(JSONResponse):
    def render(self, content) -> bytes:
        return json_bytes(content)


def error_response(status: int, error: str, detail, headers: Optional[Mapping[str, str]] = None) -> JSONResponse:
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


# Starlette types a handler as taking any Exception; each of these takes the kind it is registered for
ERROR_HANDLERS: dict[type[Exception], Any] = {
    ServiceError: on_service_error, PreferenceError: on_preference_error,
    RequestValidationError: on_validation_error, StarletteHTTPException: on_http_error}


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
    runtime: Runtime = app.state.runtime_factory(app.state.settings, app.state.metrics)
    app.state.runtime = runtime
    loading = asyncio.create_task(_start(app, runtime))  # /healthz answers meanwhile; /readyz says 503
    if app.state.hooks.load_before_serving:  # Ray Serve: a replica takes traffic once its family is loaded
        if error := await loading:
            raise RuntimeError(f"could not load the family: {error}")
    try:
        yield
    finally:
        if not loading.done():
            loading.cancel()
        runtime.close()


async def _start(app: FastAPI, runtime: Runtime) -> Optional[str]:
    try:
        await runtime.start()
        return None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        log.error("could not load the family: %s", error)
        # `pmerge serve` stops the server (exit 1, as Triton does); an embedding app keeps it up, and /readyz says why
        app.state.hooks.on_load_failure(error)
        return error


def create_app(settings: Optional[Settings] = None, runtime: RuntimeFactory = LocalRuntime) -> FastAPI:
    """The app over a runtime (default: the engines in this process)."""
    settings = settings or Settings()
    bombs_are_errors()
    app = FastAPI(title="pmerge", version="0.1.0", lifespan=lifespan, default_response_class=JSONBody,
                  docs_url=None, redoc_url=None,
                  description="Pareto-merged open_clip vision towers: any task trade-off, per request.")
    app.state.settings = settings
    app.state.runtime_factory = runtime
    app.state.hooks = Hooks()
    app.state.metrics = Metrics()
    add_offline_docs(app)
    add_ui(app)
    app.include_router(probes.probes)
    app.include_router(v2.health)
    api = APIRouter()  # every keyed route in one router: each router included is a step of every request's matching
    probes.add_metrics(api)
    families.add_listing(api)
    v2.add_routes(api)
    for naming in (Naming(default_family), Naming(named_family, "/families/{family_id}", "family_")):
        for resource in (classify, models, families, fronts):
            resource.add_routes(api, naming)
    keyed = [Depends(require_api_key)] if settings.api_key else []  # no key: nothing to check per request
    app.include_router(api, dependencies=keyed, responses={401: {"model": ErrorBody}} if keyed else None)
    for kind, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(kind, handler)
    # outermost first at run time: metrics see every status, then the body bound, then the last resort
    app.add_middleware(LastResortMiddleware, metrics=app.state.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_upload_bytes,
                       max_inflight_bytes=settings.limits.max_inflight_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


# the page runs its own scripts only, talks to this origin only, and is framed by no one (its labels are
# set with textContent already: this is the second wall); plotly.js sets inline styles as it draws
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                           "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
                                           "form-action 'self'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def add_ui(app: FastAPI) -> None:
    """The trade-off explorer at /ui: the package's own files and plotly.js from the installed plotly
    package (no CDN, no build step). The page is public; the data it asks for needs the API key."""
    from importlib.util import find_spec

    here = resources.files("service.http") / "ui"
    app.mount("/ui/static", StaticFiles(directory=str(here)), name="ui-static")
    plotly = find_spec("plotly")  # where it is, not imported: the service uses none of its Python
    assert plotly is not None and plotly.submodule_search_locations, "plotly is a dependency of pmerge"
    plotly_js = Path(plotly.submodule_search_locations[0]) / "package_data" / "plotly.min.js"

    @app.get("/ui/vendor/plotly.min.js", include_in_schema=False)
    async def plotly_script() -> FileResponse:
        return FileResponse(plotly_js, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/ui", include_in_schema=False)
    async def ui() -> HTMLResponse:
        return HTMLResponse((here / "index.html").read_text(), headers={"Cache-Control": "no-cache", **PAGE_HEADERS})


def add_offline_docs(app: FastAPI) -> None:
    """/docs and /redoc with their scripts served from an installed package: no CDN on offline machines."""
    app.mount("/docs-static", StaticFiles(directory=str(resources.files("fastapi_offline") / "static")),
              name="docs-static")

    openapi_url = app.openapi_url
    assert openapi_url, "the app publishes its OpenAPI document"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title="pmerge - Swagger UI",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title="pmerge - ReDoc",
                              redoc_js_url="/docs-static/redoc.standalone.js",
                              redoc_favicon_url="/docs-static/favicon.png", with_google_fonts=False)
