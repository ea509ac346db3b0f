"""`pmerge demo` as a user runs it: a real process that trains, serves over HTTP, and reuses its cache."""
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from models_store.store import list_families
from trainer.demo import DEMO_LEARNER
from models_store.cli import main

PMERGE = str(Path(sys.executable).parent / "pmerge")
ONE_THREAD = os.environ | {"OMP_NUM_THREADS": "1"}  # as tests/conftest.py, for the child process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError("pmerge demo never became ready")


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_demo_trains_once_serves_and_reuses_its_cache(tmp_path):
    # a micro zoo stands in for the demo zoo (which takes minutes): demo must reuse a complete zoo
    main(["zoo", "--out", str(tmp_path / "zoo"), "--arch", "micro", "--task", "digits=builtin:digits",
          "--task", "shapes=builtin:shapes", "--train-limit", "200", "--test-limit", "64",
          "--pretrain-steps", "3", "--finetune-steps", "5"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([PMERGE, "demo", "--dir", str(tmp_path), "--port", str(port), "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ONE_THREAD)
    try:
        wait_ready(url, process)
        response = httpx.post(url + "/classify", params={"pref": "0.7,0.3"}, files={"files": ("x.png", png())})
        assert response.status_code == 200, response.text
        served = response.json()["family_id"]
        front = httpx.get(url + "/front")  # evaluated once, for the page at /ui
        assert front.status_code == 200 and len(front.json()["points"]) == 3 + 2  # grid (equal in it), 0.7 each
        assert httpx.get(url + "/ui").status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    assert "reusing the zoo" in output
    assert [m.family_id for m in list_families(tmp_path / "families")] == [served]

    assert served.startswith(f"{DEMO_LEARNER}-")
    published = (tmp_path / "families" / served / "manifest.json").stat().st_mtime_ns
    again = subprocess.run([PMERGE, "demo", "--dir", str(tmp_path), "--no-serve"], capture_output=True, text=True,
                           timeout=120, check=True, env=ONE_THREAD)
    assert f"family {served}" in again.stdout
    # no second training run: the published family is reused as it is
    assert (tmp_path / "families" / served / "manifest.json").stat().st_mtime_ns == published
    assert "front of" not in again.stdout  # nor a second evaluation of its front
    assert [m.family_id for m in list_families(tmp_path / "families")] == [served]
