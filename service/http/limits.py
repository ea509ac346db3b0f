"""Request bodies: bounded each, and all together, before and while they stream in.

Raw ASGI. Each body: a declared Content-Length over `max_bytes` is refused before reading;
otherwise bytes are counted as they arrive and the first chunk over the bound stops the parser.
The rest of the body is then drained (up to DRAIN_BYTES) so an HTTP/1.1 client that is still
sending reads a clean 413 instead of a reset connection.

All bodies together: a request reserves its declared length (or `max_bytes` when chunked) of
`max_inflight_bytes` before anything is read, and gives it back when it is answered; when the
reservation does not fit, the answer is 503 with Retry-After and the body is never read. So the
memory that uploads in flight hold is bounded, however many clients send at once.
"""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Overloaded, PayloadTooLarge, ServiceError, json_body

DRAIN_BYTES = 64 << 20


class BodyTooLarge(PayloadTooLarge):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, max_inflight_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.max_inflight_bytes = max_inflight_bytes
        self.inflight = 0  # bytes reserved by the requests being served (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _drain(receive, DRAIN_BYTES if declared <= DRAIN_BYTES else 0)
            await _reply(send, PayloadTooLarge(f"request body of {declared} bytes is over the limit of "
                                               f"{self.max_bytes} bytes"))
            return
        reserve = declared if declared is not None else (self.max_bytes if _has_body(scope) else 0)
        if reserve and self.inflight + reserve > self.max_inflight_bytes:
            await _reply(send, Overloaded(f"the server holds {self.inflight} bytes of uploads in flight; "
                                          f"{reserve} more would pass its bound of {self.max_inflight_bytes}: "
                                          f"retry later"))
            return
        self.inflight += reserve
        try:
            await self._count(scope, receive, send)
        finally:
            self.inflight -= reserve

    async def _count(self, scope: Scope, receive: Receive, send: Send) -> None:

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_BYTES)
                    raise BodyTooLarge(f"request body is over the limit of {self.max_bytes} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:  # whatever the app made of the error, the answer is 413
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if started:
                raise
        if exceeded and not started:
            await _reply(send, PayloadTooLarge(f"request body is over the limit of {self.max_bytes} bytes"))


async def _reply(send: Send, error: ServiceError) -> None:
    """The app's JSON error body, sent from here; `connection: close`, as the body may be unread."""
    body = json_body(error.error, error.detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _has_body(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope.get("headers", []))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Receive, limit: int) -> None:
    drained = 0
    while drained < limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
