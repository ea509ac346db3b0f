"""`pmerge serve` with front-end processes: this process becomes the engine process, which owns the
device, the families and their batching engines; F front-end processes (service/runtime/front_end.py) accept
HTTP on one shared listening socket, parse, check and decode, and hand decoded images to it through
shared memory (vLLM's split of API server and engine core: one Python process cannot feed a GPU).
Every request still joins the same mixed-preference batches, in the one engine.

Bounds that were per process stay totals: each front gets its share of PMERGE_MAX_CONNECTIONS,
PMERGE_MAX_INFLIGHT_BYTES and PMERGE_SHARED_MEMORY_BYTES. A front that dies is started again (at
most RESTARTS a minute, then the service stops).

SIGTERM and SIGINT drain (a rolling restart): the listening socket closes at once, so new
connections are refused; the front ends finish the requests they hold, which the engine, its event loop
free, still answers; then the engine stops. A front whose engine dies (kill -9) gets SIGTERM from
the kernel (its parent-death signal) and exits too, freeing the port; a later `pmerge serve` sweeps
the temporary directories that a dead engine left behind.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from service.settings import Settings

log = logging.getLogger(__name__)

RESTARTS = 5  # front ends started again within a minute before the service gives up
DRAIN_S = 35  # how long the front ends may take to finish their requests at a stop (uvicorn gives them 30 s)
TEMPORARY = re.compile(r"pmerge-(serve|metrics)-(\d+)-")  # a temporary directory of engine process PID


def temporary_dir(kind: str) -> Path:
    """A private temporary directory named after this process, so a later start knows whether it is stale."""
    path = Path(tempfile.mkdtemp(prefix=f"pmerge-{kind}-{os.getpid()}-"))
    os.chmod(path, 0o700)
    return path


def sweep_stale_dirs(root: Optional[str] = None) -> list[Path]:
    """Remove this user's pmerge-serve-* and pmerge-metrics-* directories of engine processes that are gone."""
    removed = []
    base = Path(root or tempfile.gettempdir())
    for path in base.glob("pmerge-*"):
        match = TEMPORARY.match(path.name)
        if not match or not path.is_dir() or path.stat().st_uid != os.getuid() or alive(int(match.group(2))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def front_end_settings(settings: Settings, front_ends: int) -> dict:
    """What each front end runs with: its share of the totals, and the key in the clear (a private file)."""
    share = lambda total: max(1, -(-total // front_ends))  # noqa: E731
    mine = settings.replace(max_connections=share(settings.limits.max_connections),
                            max_inflight_bytes=share(settings.limits.max_inflight_bytes), front_ends=front_ends)
    data = mine.model_dump(mode="json")
    data["api_key"] = settings.api_key.get_secret_value() if settings.api_key else None
    return data


class Supervisor:
    def __init__(self, settings: Settings, front_ends: int, log_level: str):
        self.settings, self.front_ends, self.log_level = settings, front_ends, log_level
        self.workdir = temporary_dir("serve")
        self.engine_path = str(self.workdir / "engine.sock")
        self.settings_file = self.workdir / "front.json"
        self.settings_file.write_text(json.dumps(front_end_settings(settings, front_ends)))
        self.socket = listening_socket(settings.topology.host, settings.topology.port)
        self.procs: list[Optional[subprocess.Popen]] = [None] * front_ends
        self.restarts: list[float] = []
        self.failure: Optional[str] = None

    def spawn(self, i: int) -> None:
        from service.runtime.remote import arena_bytes
        fd = self.socket.fileno()
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "service.runtime.front_end", str(self.settings_file), str(fd), self.engine_path,
             str(arena_bytes(self.settings, self.front_ends)), self.log_level, str(os.getpid())], pass_fds=(fd,))

    async def run(self) -> Optional[str]:
        """Serve until a signal (None) or a failure (its reason)."""
        from service.runtime.engine_server import EngineServer
        from service.metrics import Metrics
        from service.runtime.local import LocalRuntime

        runtime = LocalRuntime(self.settings, Metrics())
        server = EngineServer(runtime, self.engine_path)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for i in range(self.front_ends):
            self.spawn(i)
        loading = asyncio.create_task(runtime.start())
        try:
            while not stop.is_set():
                if loading.done() and loading.exception() is not None:
                    self.failure = f"could not load the family: {runtime.error}"
                    break
                self._watch()
                if self.failure:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.socket.close()  # the front ends close theirs as they get the signal: new connections are refused
            await self._stop_front_ends()  # the engine answers their requests in flight meanwhile
            loading.cancel()
            await server.close()
            runtime.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.failure

    def _watch(self) -> None:
        from prometheus_client import multiprocess
        for i, proc in enumerate(self.procs):
            if proc is None or proc.poll() is None:
                continue
            log.warning("front end %d (pid %d) exited with %s; starting it again", i, proc.pid, proc.returncode)
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                multiprocess.mark_process_dead(proc.pid)
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < 60] + [now]
            if len(self.restarts) > RESTARTS:
                self.failure = f"front ends exited {len(self.restarts)} times within a minute"
                return
            self.spawn(i)

    async def _stop_front_ends(self) -> None:
        """SIGTERM to every front, then wait for them without blocking the loop: their requests in flight
        are still being answered by this process's engine server."""
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_S
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for p in live:
            if p.poll() is None:
                log.warning("front end (pid %d) did not stop within %d s; killed", p.pid, DRAIN_S)
                p.kill()
                p.wait()


SHM = "/dev/shm"


def check_shared_memory(settings: Settings, path: str = SHM) -> Optional[str]:
    """Why the front ends' arenas cannot fit in `path` (a container's default /dev/shm is 64 MiB), or None."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None  # no such filesystem here: Python's shared memory says what it needs
    free = stat.f_bavail * stat.f_frsize
    if free >= settings.topology.shared_memory_bytes:
        return None
    return (f"PMERGE_SHARED_MEMORY_BYTES is {settings.topology.shared_memory_bytes >> 20} MiB but {path} has "
            f"{free >> 20} MiB free: lower it, or give the container more (docker run --shm-size, compose "
            f"shm_size)")


def serve_with_front_ends(settings: Settings, front_ends: int, log_level: str) -> Optional[str]:
    """Run the engine process and its front ends; the reason of a failure, or None after a signal."""
    problem = check_shared_memory(settings)
    if problem:
        return problem
    for stale in sweep_stale_dirs():
        log.info("removed %s, left by an engine process that is gone", stale)
    metrics_dir = str(temporary_dir("metrics"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any metric exists, here and in the front ends
    try:
        return asyncio.run(Supervisor(settings, front_ends, log_level).run())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
