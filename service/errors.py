"""Service errors: each carries its HTTP status and a short machine-readable `error` code.

Raised by plain modules (images, engine, downloads) as well as routes; the app turns every one
into a JSON body `{"error": <code>, "detail": <message naming the problem>}`.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from pydantic import BaseModel


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


def json_bytes(content: Any) -> bytes:
    """Every JSON body the service sends: compact UTF-8 with one trailing newline (for curl and shells)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def json_body(error: str, detail: Any) -> bytes:
    return json_bytes(ErrorBody(error=error, detail=detail).model_dump())


class ServiceError(Exception):
    status: int = 500
    error: str = "internal_error"

    def __init__(self, detail: str, headers: Optional[dict[str, str]] = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, error = 400, "bad_request"


class Unauthorized(ServiceError):
    status, error = 401, "unauthorized"

    def __init__(self, detail: str):
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class PayloadTooLarge(ServiceError):
    status, error = 413, "payload_too_large"


class UnsupportedImage(ServiceError):
    status, error = 415, "unsupported_media_type"


class UnknownFamily(ServiceError):
    status, error = 404, "unknown_family"


class NoFront(ServiceError):
    status, error = 404, "no_front"


class InvalidParameter(ServiceError):
    status, error = 422, "invalid_parameter"


class Unavailable(ServiceError):
    """Not ready yet, or overloaded: the client should come back after `retry_after` seconds."""
    status, error = 503, "unavailable"

    def __init__(self, detail: str, retry_after: int = 1):
        super().__init__(detail, {"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = max(1, int(retry_after))


class Overloaded(Unavailable):
    error = "overloaded"


class NotReady(Unavailable):
    error = "not_ready"


class FamilyUnavailable(Unavailable):
    """A family of the store that cannot be loaded (corrupt, incomplete): the detail says which and why."""
    error = "family_unavailable"


class FrontUnavailable(Unavailable):
    """A family's stored front that cannot be read (`pmerge front` writes it again)."""
    error = "front_unavailable"


class InsufficientStorage(ServiceError):
    """The download cache's disk is full, even after evicting what it could."""
    status, error = 507, "insufficient_storage"


# error codes for statuses raised by FastAPI/Starlette themselves (HTTPException)
STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_parameter",
                503: "unavailable", 507: "insufficient_storage"}


def error_code(status: int) -> str:
    return STATUS_CODES.get(status, "internal_error" if status >= 500 else "error")
