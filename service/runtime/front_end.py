"""A front-end process of `pmerge serve` (service/runtime/processes.py starts them): the HTTP app on the
shared listening socket, over the engine process.

    python -m service.runtime.front_end SETTINGS_JSON SOCKET_FD ENGINE_SOCKET ARENA_BYTES LOG_LEVEL ENGINE_PID

A front end lives no longer than its engine process: the kernel sends it SIGTERM when the engine dies
(Linux's parent-death signal), and uvicorn then stops as it does on any SIGTERM.
"""
from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path


PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """SIGTERM to this process when `parent` exits; exit now if it already has."""
    import ctypes
    import os
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the engine's socket going away still fails requests
        pass
    if os.getppid() != parent:  # it died before the signal was armed
        sys.exit(0)


def main(argv: list[str]) -> None:
    settings_file, fd, engine, arena, log_level, parent = argv
    die_with(int(parent))
    import uvicorn

    from service.http.app import create_app
    from service.runtime.remote import RemoteRuntime
    from service.http.server import uvicorn_config
    from service.settings import Settings

    settings = Settings.model_validate_json(Path(settings_file).read_text())
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, runtime=lambda s, m: RemoteRuntime(s, m, engine, int(arena)))
    server = uvicorn.Server(uvicorn_config(app, settings, log_level=log_level))
    server.run(sockets=[socket.socket(fileno=int(fd))])


if __name__ == "__main__":
    main(sys.argv[1:])
