"""The HTTP server: uvicorn, with the connection bounds its settings lack.

uvicorn's settings cap idle keep-alive time, but not the time a client may take to send its
headers or its body, nor the number of open connections (`limit_concurrency` answers 503 yet keeps
every socket open). A client that never finishes its request would hold a socket, and so a file
descriptor, forever. `BoundedProtocol` adds those bounds to uvicorn's httptools protocol:

- headers: a request's headers must be complete within `header_timeout_s` of its first byte
  (or of the connection, for the first request), else the connection gets a 408 and is closed;
- body: the whole body within `body_timeout_s` of the end of the headers, else it is closed;
- connections: beyond `max_connections` open at once, a new one gets a 503 and is closed.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any, Optional

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import json_body
from service.settings import Limits, Settings

log = logging.getLogger(__name__)


def _raw_response(status: int, reason: str, error: str, detail: str, extra: str = "") -> bytes:
    body = json_body(error, detail)
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n")
    return head.encode() + body


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (its C parser: a fraction of h11's cost per request), with
    deadlines on a request's headers and body and a cap on open connections."""
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 512

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: Optional[asyncio.TimerHandle] = None
        self._phase: Optional[str] = None  # "headers" or "body" while a deadline runs
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("refused a connection: %d open, the limit is %d", len(self.connections), self.max_connections)
            transport.write(_raw_response(503, "Service Unavailable", "overloaded",
                                          f"too many open connections (limit {self.max_connections})",
                                          "retry-after: 1\r\n"))
            transport.close()
            return
        self._arm("headers")  # the first request's headers are owed from the start

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm("headers")  # a keep-alive connection started its next request

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm("body")  # disarmed at once by a request without a body

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        if self._phase == phase or self.transport is None or self.transport.is_closing():
            return
        self._disarm()
        timeout = self.header_timeout_s if phase == "headers" else self.body_timeout_s
        self._phase = phase
        self._deadline = self.loop.call_later(timeout, self._expire, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expire(self, phase: str) -> None:
        self._deadline, self._phase = None, None
        if self.transport.is_closing():
            return
        log.info("closed a connection from %s: its request %s took more than %.0f s", self.client, phase,
                 self.header_timeout_s if phase == "headers" else self.body_timeout_s)
        if phase == "headers" and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(_raw_response(408, "Request Timeout", "request_timeout",
                                               f"request headers not complete within {self.header_timeout_s:g} s"))
        self.transport.close()  # connection_lost then tells a waiting app: http.disconnect


def protocol_class(limits: Limits) -> type[BoundedProtocol]:
    return type("BoundedProtocol", (BoundedProtocol,), {
        "header_timeout_s": limits.header_timeout_s, "body_timeout_s": limits.body_timeout_s,
        "max_connections": limits.max_connections})


def uvicorn_config(app, settings: Settings, **overrides) -> uvicorn.Config:
    """The one server configuration, for `pmerge serve` and the end-to-end tests alike."""
    options: dict[str, Any] = dict(host=settings.topology.host, port=settings.topology.port,
                                   http=protocol_class(settings.limits),
                                   timeout_keep_alive=settings.limits.keepalive_timeout_s, timeout_graceful_shutdown=30,
                                   lifespan="on")
    return uvicorn.Config(app, **(options | overrides))


def check_port_free(host: str, port: int) -> None:
    """Fail before the (slow) family load when the address is taken, with a message that says so."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(e.errno, f"port {port} on {host} is already in use: stop the other server, or choose "
                                       f"another port (--port, PMERGE_PORT, `make demo PORT=...`)") from None
            raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
