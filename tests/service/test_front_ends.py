"""`pmerge serve --front-ends 2` as a user runs it: a real subprocess whose front-end processes parse and
decode, and one engine process that classifies. It answers what the one-process server answers,
batches requests from both fronts together, keeps the bounds, key and errors, survives a front that
dies, and stops cleanly on SIGTERM."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from safetensors.torch import load as load_safetensors

from service.http.app import create_app
from service.settings import Settings

from svc_helpers import FAMILY_ID, free_port, png_bytes, running_server

ROOT = Path(__file__).parents[2]
KEY = "front-key"
HEADERS = {"authorization": f"Bearer {KEY}"}


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith("psm_")}


def start_split(store: Path, port: int, **env: str) -> tuple[subprocess.Popen, str]:
    """`pmerge serve --front-ends 2` as a user starts it, once it is ready: the process and its URL."""
    env = os.environ | {"PMERGE_API_KEY": KEY} | env
    proc = subprocess.Popen([sys.executable, "-m", "models_store.cli", "serve", "--store", str(store), "--family",
                             FAMILY_ID, "--device", "cpu", "--port", str(port), "--front-ends", "2", "--max-batch", "64",
                             "--log-level", "warning"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "pmerge serve --front-ends 2 never became ready"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def split_server(store, tmp_path_factory):
    shm_before = shm_segments()
    proc, url = start_split(store, free_port(), PMERGE_MAX_WAIT_MS="300",
                            PMERGE_DOWNLOAD_CACHE_DIR=str(tmp_path_factory.mktemp("dl")))
    yield url, proc, shm_before
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def classify(url: str, images: list[bytes], headers=HEADERS, **params) -> httpx.Response:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return httpx.post(url + "/classify", params=params, files=files, headers=headers, timeout=60)


def test_two_fronts_answer_what_one_process_answers(split_server, store, tmp_path):
    url, proc, _ = split_server
    assert len(children(proc.pid)) >= 2  # the fronts (and a resource tracker)
    settings = Settings(store=store, family=FAMILY_ID, device="cpu", api_key=SecretStr(KEY),
                        download_cache_dir=tmp_path / "dl")
    images = [png_bytes(s) for s in range(5)]
    with running_server(create_app(settings)) as reference:
        for pref in ("1,0,0", "0.2,0.3,0.5", "digits:0.7,fashion:0.3"):
            split = classify(url, images, pref=pref, top_k=3)
            one = classify(reference, images, pref=pref, top_k=3)
            assert split.status_code == one.status_code == 200, split.text
            for got, want in zip(split.json()["results"], one.json()["results"], strict=True):
                for task, labels in want["predictions"].items():
                    assert [x["index"] for x in got["predictions"][task]] == [x["index"] for x in labels]
                    for g, w in zip(got["predictions"][task], labels):
                        assert abs(g["probability"] - w["probability"]) < 1e-5
        # a download is merged by the engine and streamed through a front: the same bytes' tensors
        split_ckpt = load_safetensors(httpx.get(url + "/models/0.2,0.3,0.5", headers=HEADERS, timeout=60).content)
        one_ckpt = load_safetensors(httpx.get(reference + "/models/0.2,0.3,0.5", headers=HEADERS, timeout=60).content)
    assert split_ckpt.keys() == one_ckpt.keys()
    assert all((split_ckpt[k] == one_ckpt[k]).all() for k in one_ckpt)


def test_front_select_and_the_page_through_the_fronts(split_server, store):
    """The explorer's routes work in the split too: the front read by a front process, select's
    candidates classified by the engine."""
    from models_store.family import now_iso
    from models_store.fronts import FrontPoint, StoredFront, write_front
    url, _, _ = split_server
    write_front(store, StoredFront(family_id=FAMILY_ID, tasks=["digits", "fashion", "letters"], created=now_iso(),
                                   hypervolume=0.1, points=[FrontPoint(preference="digits:1,fashion:0,letters:0",
                                                                       accuracy={"digits": 0.9}, on_front=True)]))
    assert httpx.get(url + "/front", headers=HEADERS).json()["points"][0]["accuracy"] == {"digits": 0.9}
    files = [("files", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    selected = httpx.post(url + "/select", params={"samples": 3}, files=files, headers=HEADERS, timeout=60)
    assert selected.status_code == 200 and len(selected.json()["trials"]) == 1 + 3 + 3
    assert httpx.get(url + "/ui").status_code == 200
    # the Open Inference Protocol through a front: a JSON inference, one preference row per image
    import base64
    header = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [2],
                          "data": [base64.b64encode(png_bytes(i)).decode() for i in range(2)]},
                         {"name": "PREFERENCE", "datatype": "FP32", "shape": [2, 3], "data": [[1, 0, 0], [0, 1, 1]]}]}
    v2 = httpx.post(url + f"/v2/models/{FAMILY_ID}/infer", json=header, headers=HEADERS, timeout=60)
    assert v2.status_code == 200 and [o["shape"] for o in v2.json()["outputs"]] == [[2, 5], [2, 3], [2, 4]]


def test_requests_of_both_fronts_join_the_same_batches(split_server):
    url, _, _ = split_server
    images = [png_bytes(s) for s in range(24)]

    async def burst() -> list[int]:
        # a connection each: the kernel spreads them over the two fronts' accept queues
        async def one(i: int) -> int:
            async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as client:
                files = [("files", ("x.png", images[i], "image/png"))]
                r = await client.post("/classify", params={"pref": f"{i % 3},1,1"}, files=files)
                return r.status_code
        return await asyncio.gather(*(one(i) for i in range(len(images))))

    def batches() -> tuple[float, float]:
        text = httpx.get(url + "/metrics", headers=HEADERS, timeout=10).text
        value = lambda name: sum(float(line.split()[-1]) for line in text.splitlines()  # noqa: E731
                                 if line.startswith(name + " ") or line.startswith(name + "{"))
        return value("pmerge_batch_size_images_count"), value("pmerge_batch_size_images_sum")

    count0, images0 = batches()
    assert asyncio.run(burst()) == [200] * len(images)
    count1, images1 = batches()
    assert images1 - images0 == len(images)
    assert count1 - count0 < len(images) / 2, "requests were not batched together"
    text = httpx.get(url + "/metrics", headers=HEADERS, timeout=10).text
    assert 'route="/classify"' in text  # the fronts' request counters, aggregated across processes


@pytest.mark.parametrize("path,params,files,headers,status,error", [
    ("/classify", {}, [("files", ("a.png", png_bytes(1), "image/png"))], {}, 401, "unauthorized"),
    ("/classify", {"pref": "1,-1,0"}, [("files", ("a.png", png_bytes(1), "image/png"))], HEADERS, 422, None),
    ("/classify", {}, [("files", ("a.png", b"not an image", "image/png"))], HEADERS, 415, None),
    ("/families/nope/classify", {}, [("files", ("a.png", png_bytes(1), "image/png"))], HEADERS, 404, None),
    ("/models/1,2", {}, None, HEADERS, 422, None),
])
def test_errors_come_back_through_the_fronts(split_server, path, params, files, headers, status, error):
    url, _, _ = split_server
    if files is None:
        r = httpx.get(url + path, params=params, headers=headers, timeout=30)
    else:
        r = httpx.post(url + path, params=params, files=files, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["detail"] and (error is None or body["error"] == error)


def test_a_front_that_dies_is_started_again(split_server):
    url, proc, _ = split_server
    fronts = [pid for pid in children(proc.pid) if "service.runtime.front_end" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(fronts) == 2
    os.kill(fronts[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        alive = [pid for pid in children(proc.pid) if "service.runtime.front_end" in Path(f"/proc/{pid}/cmdline").read_text()]
        if len(alive) == 2 and fronts[0] not in alive:
            break
        assert time.monotonic() < deadline, "the front was not started again"
        time.sleep(0.2)
    for _ in range(6):  # whichever front accepts, the answer is right
        assert classify(url, [png_bytes(2)], pref="1,1,1").status_code == 200


def test_sigterm_stops_fronts_and_engine_and_leaves_nothing(split_server):
    url, proc, shm_before = split_server
    pids = children(proc.pid)
    assert classify(url, [png_bytes(3)]).status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]
    err = proc.stderr.read()
    assert "Traceback" not in err and "CancelledError" not in err, err[-3000:]  # an idle stop logs no error
    live = lambda: [(pid, Path(f"/proc/{pid}/cmdline").read_text()) for pid in pids  # noqa: E731
                    if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    deadline = time.monotonic() + 5  # the resource tracker notices its engine is gone within a moment
    while live() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live()
    time.sleep(0.5)  # the resource tracker unlinks a killed front's arena once it notices
    assert shm_segments() <= shm_before


def test_too_little_shared_memory_is_said_before_anything_starts(store, tmp_path):
    """A container's /dev/shm is 64 MiB unless it is given more: the arenas would not fit."""
    from service.runtime.processes import check_shared_memory
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    too_much = Settings(store=store, shared_memory_bytes=free + (64 << 20))
    assert "PMERGE_SHARED_MEMORY_BYTES" in check_shared_memory(too_much) and "shm_size" in check_shared_memory(too_much)
    assert check_shared_memory(Settings(store=store, shared_memory_bytes=1 << 20)) is None
    done = subprocess.run([sys.executable, "-m", "models_store.cli", "serve", "--store", str(store), "--device", "cpu",
                           "--port", str(free_port()), "--fronts", "1"],  # the old name of --front-ends
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=os.environ | {"PMERGE_SHARED_MEMORY_BYTES": str(free + (64 << 20))})
    assert done.returncode == 1 and "MiB free: lower it" in done.stderr, done.stderr[-2000:]


def test_sigterm_drains_requests_in_flight_and_refuses_new_connections(store, tmp_path):
    """A rolling restart (docker stop, a Kubernetes rollout): requests in flight at SIGTERM answer,
    connections made after it are refused at once, the server exits in seconds, and logs no traceback."""
    from concurrent.futures import ThreadPoolExecutor
    proc, url = start_split(store, free_port(), PMERGE_MAX_WAIT_MS="1500", TMPDIR=str(tmp_path))
    try:
        with ThreadPoolExecutor(6) as pool:
            # each waits up to 1.5 s for its batch to fill: in flight when the signal comes
            pending = [pool.submit(classify, url, [png_bytes(i)]) for i in range(6)]
            time.sleep(0.7)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            start = time.monotonic()
            with pytest.raises(httpx.ConnectError):
                httpx.get(url + "/livez", timeout=5)
            assert time.monotonic() - start < 1, "a new connection waited instead of being refused"
            answers = [f.result(30) for f in pending]
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert "Traceback" not in err and "CancelledError" not in err, err[-3000:]
    assert not list(tmp_path.glob("pmerge-*")), "the server left its temporary directories"


def test_fronts_exit_when_the_engine_is_killed_and_a_restart_sweeps_what_it_left(store, tmp_path):
    """kill -9 of the engine: its fronts exit and free the port, so `pmerge serve` starts again on it
    and removes the temporary directories the dead engine left."""
    port = free_port()
    proc, url = start_split(store, port, TMPDIR=str(tmp_path))
    fronts = [pid for pid in children(proc.pid) if "service.runtime.front_end" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(fronts) == 2
    left = {p.name for p in tmp_path.glob("pmerge-*")}
    assert {n.split("-")[1] for n in left} == {"serve", "metrics"}
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
              for pid in fronts):
        assert time.monotonic() < deadline, "the fronts outlived their engine"
        time.sleep(0.1)
    assert {p.name for p in tmp_path.glob("pmerge-*")} == left  # kill -9: nothing could clean up
    again, url = start_split(store, port, TMPDIR=str(tmp_path))  # the same port is free again
    try:
        assert classify(url, [png_bytes(1)]).status_code == 200
        assert not left & {p.name for p in tmp_path.glob("pmerge-*")}, "the dead engine's directories stayed"
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0


def test_the_old_names_of_front_ends_are_read_for_one_release(monkeypatch, tmp_path):
    """`--fronts` and PMERGE_FRONTS, the names before "front" meant a Pareto front only."""
    import argparse

    from service.cli import add_serve_arguments
    monkeypatch.setenv("PMERGE_FRONTS", "3")
    assert Settings(store=tmp_path).topology.front_end_count() == 3
    monkeypatch.setenv("PMERGE_FRONT_ENDS", "2")
    assert Settings(store=tmp_path).topology.front_end_count() == 2
    assert Settings(store=tmp_path, front_ends=0).topology.front_end_count() == 0
    parser = add_serve_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--fronts", "1"]).front_ends == parser.parse_args(["--front-ends", "1"]).front_ends == 1
