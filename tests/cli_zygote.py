"""A fork server for the `pmerge` command, for tests that run many CLI lines (the README's).

Each `pmerge` process pays torch's and open_clip's import (seconds) before it does anything; a test
that runs thirty command lines pays it thirty times. The zygote imports them once, then forks a
child per command line. The child is a real process of its own: it gets the caller's argv, working
directory, environment and standard streams (passed as file descriptors), runs `pmerge`'s own main,
and its exit status is the command's. The caller is `bin/pmerge` of `shim_venv`, a tiny script, so
the shell line around it (redirections, `$(...)`) runs as a user's would.

    python tests/cli_zygote.py SOCKET       (the test starts it; it serves until killed)
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SHIM = """#!{python}
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({socket!r})
request = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [len(request).to_bytes(8, "little") + request], [0, 1, 2])
sys.exit(int(s.recv(16) or b"1"))
"""


def run_child(request: dict) -> int:
    from models_store.cli import main
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["pmerge", *request["argv"]]
    try:
        main(request["argv"])
        return 0
    except SystemExit as e:  # as the interpreter reports it
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        return 1


def receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = int.from_bytes(data[:8], "little")
    data = data[8:]
    while len(data) < size:
        data += conn.recv(1 << 16)
    return json.loads(data), fds


def serve(path: str) -> None:
    import open_clip  # noqa: F401  (what every command would import: paid once, here)
    import torch  # noqa: F401
    import models_store.cli
    from argparse import ArgumentParser
    for command in models_store.cli.commands().values():  # every command's modules, flags included
        if command.choices is None:
            command.add_arguments(ArgumentParser())
        for choice in command.choices() if command.choices else ():
            command.add_arguments(ArgumentParser(), choice)
    import service.http.app  # noqa: F401
    import trainer.front  # noqa: F401
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(4)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            request, fds = receive(conn)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                code = run_child(request)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            for fd in fds:
                os.close(fd)
            _, status = os.waitpid(pid, 0)
            conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())


@contextmanager
def shim_venv(venv: Path, real: Path) -> Iterator[Path]:
    """`venv` laid out as a user's `.venv` (its python is `real`'s, with its packages) whose
    `bin/pmerge` runs each command in a child of a zygote; yields `venv`, stops the zygote after."""
    (venv / "bin").mkdir(parents=True)
    shutil.copy(real / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "lib").symlink_to(real / "lib")
    (venv / "bin" / "python").symlink_to(real / "bin" / "python")
    path = str(venv / "zygote.sock")
    zygote = subprocess.Popen([sys.executable, __file__, path], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while zygote.stdout.readline().strip() != "ready":
            if zygote.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the pmerge zygote did not start")
        shim = venv / "bin" / "pmerge"
        shim.write_text(SHIM.format(python=sys.executable, socket=path))
        shim.chmod(0o755)
        yield venv
    finally:
        zygote.kill()
        zygote.wait()


if __name__ == "__main__":
    # tests/ is on the path as this script's folder: its test folders would shadow the packages
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    serve(sys.argv[1])
