"""What the routes depend on (FastAPI's dependency injection): the settings, the runtime, the API
key, and the family a route holds for the length of a request."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated, AsyncIterator, Awaitable, Callable, Optional

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import NotReady, Unauthorized
from service.engine.families import FamilyView
from service.runtime.base import Runtime
from service.settings import Settings


async def _nothing(family_id: str) -> None:
    return None


@dataclass
class Hooks:
    """What an embedding server (`pmerge serve`, Ray Serve) learns of the app, and tells it."""
    on_load_failure: Callable[[str], None] = lambda error: None  # the default family did not load
    load_before_serving: bool = False  # Ray Serve: a replica takes traffic once its family is loaded
    on_named_family: Callable[[str], Awaitable[None]] = field(default=_nothing)  # Ray: the replica holds it


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:  # the lifespan has not run yet
        raise NotReady("server is starting")
    return runtime


_bearer = HTTPBearer(auto_error=False, description="required when the server has PMERGE_API_KEY set")


async def require_api_key(settings: Annotated[Settings, Depends(get_settings)],
                          credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(_bearer)]) -> None:
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if not key:
        return
    if credentials is None:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(credentials.credentials.encode(), key.encode()):
        raise Unauthorized("invalid API key")


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def default_family(runtime: RuntimeDep) -> AsyncIterator[FamilyView]:
    """The default family, held for the request."""
    async with runtime.hold(None) as family:
        yield family


async def named_family(request: Request, runtime: RuntimeDep, family_id: Annotated[str, Path(
        description="a family id of GET /families; loaded on first use")]) -> AsyncIterator[FamilyView]:
    """The family of the path, loaded on first use and held for the request (never evicted meanwhile)."""
    async with runtime.hold(family_id) as family:
        await request.app.state.hooks.on_named_family(family_id)
        yield family
