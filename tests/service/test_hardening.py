"""What outside testing found (issue 11), each through the layer where it lives and, where it was
seen over HTTP, through a real uvicorn server. Every test here failed before its fix."""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from models_store import StoreError
from models_store.family import MANIFEST
from models_store.store import family_path, list_families, open_family
from models_store.preference import PreferenceError, parse_preference
from models_store.preprocess import MAX_RESIZED, Preprocess
from service.runtime import base as runtime_module
from service.http.app import create_app
from service.engine.images import decode_image
from service.settings import Settings

from svc_helpers import FAMILY_ID, free_port, make_family, png_bytes, running_server

MAX_PIXELS = 40_000_000
PLAIN = Preprocess(image_size=32, mean=(0, 0, 0), std=(1, 1, 1))


@pytest.fixture
def settings(store, tmp_path) -> Settings:
    return Settings(store=store, family=FAMILY_ID, device="cpu", max_batch=8, max_wait_ms=5,
                    download_cache_dir=tmp_path / "downloads")


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def classify(url: str, data: bytes, client=httpx, **params) -> httpx.Response:
    return client.post(url + "/classify", params=params, files=[("files", ("x.png", data, "image/png"))], timeout=30)


# --- 1. thin images ---------------------------------------------------------------------------

def test_preprocessing_is_open_clips_for_ordinary_images():
    """Numerically identical to torchvision's Resize(S, bicubic) + CenterCrop(S), open_clip's eval transform."""
    rng = np.random.default_rng(0)
    reference = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor()])
    sizes = [(32, 32), (31, 64), (64, 31), (500, 40), (40, 500), (7, 100), (33, 300), (1, 16), (200, 199)]
    for w, h in sizes:
        for mode in ("RGB", "L"):
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
            assert torch.equal(PLAIN.pil_to_tensor(image), reference(image.convert("RGB"))), (w, h, mode)


def test_thin_images_are_cropped_before_they_are_resampled(monkeypatch):
    """A 100000 x 2 strip was resized whole to 800000 x 16 (its short side to S) before the crop:
    cost grows with the aspect ratio (2,500,000 x 16 at S = 224 took +1.3 GB)."""
    resampled = []
    original = Image.Image.resize

    def recording(self, size, *args, **kwargs):
        resampled.append(size[0] * size[1])
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    pre = Preprocess(image_size=16)
    strip = Image.fromarray(np.random.default_rng(1).integers(0, 256, (2, 100_000), dtype=np.uint8))
    x = pre.pil_to_tensor(strip)
    assert x.shape == (3, 16, 16) and torch.isfinite(x).all()
    assert resampled and max(resampled) <= MAX_RESIZED * 16 * 16, resampled
    # the same crop as resize-then-crop, to within bicubic rounding
    monkeypatch.setattr(Image.Image, "resize", original)
    small = Image.fromarray(np.random.default_rng(2).integers(0, 256, (3, 300), dtype=np.uint8))
    full = T.Compose([T.Resize(16, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(16), T.ToTensor()])
    assert 300 / 3 * 16 * 16 > MAX_RESIZED * 16 * 16  # goes through the bounded path
    assert (PLAIN.model_copy(update={"image_size": 16}).pil_to_tensor(small) - full(small.convert("RGB"))).abs().max() < 0.1


def test_thin_image_over_http_is_answered(settings):
    with running_server(create_app(settings)) as url:
        strip = encoded(Image.new("L", (400_000, 2), 128))
        r = classify(url, strip)
        assert r.status_code == 200, r.text


# --- 2. overflowing preferences, and the last-resort path --------------------------------------

def test_overflowing_preference_is_a_preference_error():
    with pytest.raises(PreferenceError, match="sum to more than the largest float"):
        parse_preference("1e308,1e308,0,0", ["a", "b", "c", "d"])
    assert parse_preference("1e300,1e300", ["a", "b"]).canonical == "a:0.5,b:0.5"


def test_overflowing_preference_over_http_is_422_and_keeps_the_connection(settings):
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(2):  # twice on one keep-alive connection
            r = classify("", png_bytes(0), client=client, pref="1e308,1e308,0")
            assert r.status_code == 422 and "largest float" in r.json()["detail"], r.text
            r = client.get("/models/1e308,1e308,0")
            assert r.status_code == 422 and r.json()["error"] == "invalid_preference", r.text
        assert "pmerge_unhandled_exceptions_total 0.0" in client.get("/metrics").text


def test_last_resort_500_keeps_the_keep_alive_connection(settings):
    """Starlette's catch-all answered 500 and re-raised; uvicorn then reset the connection, so the
    next request on it failed with no response."""
    app = create_app(settings)

    def boom():
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(3):
            r = client.get("/boom")
            assert r.status_code == 500 and r.json() == {"error": "internal_error", "detail": "internal server error"}
        assert client.get("/healthz").status_code == 200
        assert "pmerge_unhandled_exceptions_total 3.0" in client.get("/metrics").text


# --- 3. 16-bit and float images; 4. EXIF orientation -----------------------------------------

def eight_bit_original(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 20), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "PPM"])
def test_16_bit_grayscale_is_scaled_not_clipped(fmt):
    original = eight_bit_original()
    wide = Image.fromarray(original.astype(np.uint16) * 257)  # 0..255 -> 0..65535
    data = encoded(wide, fmt)
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    expected = decode_image(encoded(Image.fromarray(original)), PLAIN, MAX_PIXELS)
    assert np.array_equal(decode_image(data, PLAIN, MAX_PIXELS), expected)


def test_float_tiff_is_scaled_from_0_1():
    original = eight_bit_original()
    data = encoded(Image.fromarray(original.astype(np.float32) / 255), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    expected = decode_image(encoded(Image.fromarray(original)), PLAIN, MAX_PIXELS)
    assert np.array_equal(decode_image(data, PLAIN, MAX_PIXELS), expected)


def test_exif_orientation_is_applied():
    upright = Image.fromarray(np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the pixels are stored turned the other way
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    for fmt in ("PNG", "JPEG"):
        data = encoded(stored, fmt, exif=exif.tobytes())
        # what a viewer shows: the decoded pixels, turned as the tag says
        shown = Image.open(io.BytesIO(data)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
        assert shown.size == upright.size
        assert np.array_equal(decode_image(data, PLAIN, MAX_PIXELS), decode_image(encoded(shown), PLAIN, MAX_PIXELS)), fmt
        sideways = decode_image(encoded(Image.open(io.BytesIO(data)).convert("RGB")), PLAIN, MAX_PIXELS)
        assert not np.array_equal(decode_image(data, PLAIN, MAX_PIXELS), sideways)


def test_16_bit_and_rotated_images_over_http_answer_as_their_originals(settings):
    original = eight_bit_original()
    with running_server(create_app(settings)) as url:
        want = classify(url, encoded(Image.fromarray(original))).json()["results"][0]["predictions"]
        got = classify(url, encoded(Image.fromarray(original.astype(np.uint16) * 257))).json()
        assert got["results"][0]["predictions"] == want
        exif = Image.Exif()
        exif[0x0112] = 6
        sideways = Image.fromarray(original).transpose(Image.Transpose.ROTATE_90)
        got = classify(url, encoded(sideways, exif=exif.tobytes())).json()
        assert got["results"][0]["predictions"] == want


# --- 5. slow clients ------------------------------------------------------------------------------

def open_slow(url: str, n: int, payload: bytes) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(payload)
        sockets.append(s)
    return sockets


def closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while s.recv(65536):  # a 408 may come first, then the close
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def test_slow_clients_are_cut_and_do_not_block_others(settings):
    """Clients that never finished their headers or body were kept open forever."""
    fast = settings.replace(**{"header_timeout_s": 1.0, "body_timeout_s": 2.0})
    with running_server(create_app(fast)) as url:
        slow_headers = open_slow(url, 40, b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Ty")
        slow_body = open_slow(url, 10, b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                                       b"boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\n")
        idle = open_slow(url, 10, b"")
        started = time.monotonic()
        r = classify(url, png_bytes(0))
        assert r.status_code == 200 and time.monotonic() - started < 5
        try:
            assert all(closed_by_server(s, 5) for s in slow_headers + idle), "slow headers kept open"
            assert all(closed_by_server(s, 5) for s in slow_body), "slow body kept open"
        finally:
            for s in slow_headers + slow_body + idle:
                s.close()
        assert classify(url, png_bytes(1)).status_code == 200


def test_open_connections_are_capped(settings):
    capped = settings.replace(**{"max_connections": 4, "header_timeout_s": 30.0})
    with running_server(create_app(capped)) as url:
        held = open_slow(url, 4, b"")
        try:
            extra = open_slow(url, 1, b"")[0]
            extra.settimeout(5)
            answer = extra.recv(65536)
            assert answer.startswith(b"HTTP/1.1 503") and b"too many open connections" in answer
            extra.close()
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
        assert classify(url, png_bytes(0)).status_code == 200


# --- 6. admission control -----------------------------------------------------------------------

def test_bytes_in_flight_are_bounded_before_reading(settings):
    """The body bound was per request: 60 clients x 16 MiB were held at once."""
    bounded = settings.replace(**{"max_upload_bytes": 100_000, "max_inflight_bytes": 150_000,
                                          "body_timeout_s": 30.0})
    with running_server(create_app(bounded)) as url:
        holder = open_slow(url, 1, b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                                   b"boundary=b\r\nContent-Length: 90000\r\n\r\n--b\r\n")[0]
        try:
            time.sleep(0.3)
            r = httpx.post(url + "/classify", content=b"x" * 80_000,
                           headers={"content-type": "multipart/form-data; boundary=b"}, timeout=10)
            assert r.status_code == 503 and r.json()["error"] == "overloaded", r.text
            assert "in flight" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
            assert classify(url, png_bytes(0)).status_code == 200  # small bodies still fit
        finally:
            holder.close()
        time.sleep(0.3)
        r = httpx.post(url + "/classify", content=b"x" * 80_000,
                       headers={"content-type": "multipart/form-data; boundary=b"}, timeout=10)
        assert r.status_code == 400, r.text  # admitted now (and malformed)


def test_requests_the_queue_cannot_take_are_not_decoded(settings, monkeypatch):
    """During an overload burst every request was decoded before being refused."""
    decoded = []
    real = runtime_module.decode_uploads

    def counting(files, *args):
        decoded.append(len(files))
        return real(files, *args)

    monkeypatch.setattr(runtime_module, "decode_uploads", counting)
    tight = settings.replace(**{"queue_size": 2, "max_batch": 1, "max_wait_ms": 0})
    with running_server(create_app(tight)) as url:
        decoded.clear()  # the warm-up decodes nothing, but be exact

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=100)) as c:
                files = [("files", ("a.png", png_bytes(0), "image/png")), ("files", ("b.png", png_bytes(1), "image/png"))]
                return await asyncio.gather(*(c.post("/classify", files=files) for _ in range(40)))

        responses = asyncio.run(burst())
    ok = sum(r.status_code == 200 for r in responses)
    assert {r.status_code for r in responses} <= {200, 503} and ok >= 1
    assert len(decoded) == ok, f"{len(decoded)} requests decoded, {ok} answered"


# --- 7. one bad directory; 9. a family that fails verification ---------------------------------

def damaged_store(root: Path) -> Path:
    make_family(root, "good", seed=1)
    (root / "broken").mkdir()
    (root / "broken" / MANIFEST).write_text('{"format": 1, "family_id": "bro')  # an interrupted copy
    newer = make_family(root, "newer-incomplete", seed=2)
    manifest = json.loads((newer / MANIFEST).read_text())
    manifest["created"] = "2999-01-01T00:00:00+00:00"
    (newer / MANIFEST).write_text(json.dumps(manifest))
    (newer / "base.safetensors").unlink()
    tampered = make_family(root, "newer-tampered", seed=3)
    manifest = json.loads((tampered / MANIFEST).read_text())
    manifest["created"] = "2998-01-01T00:00:00+00:00"
    (tampered / MANIFEST).write_text(json.dumps(manifest))
    with open(tampered / "heads.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    return root


def test_a_bad_directory_does_not_break_the_store(tmp_path, caplog):
    store = damaged_store(tmp_path)
    assert {m.family_id for m in list_families(store)} == {"good", "newer-incomplete", "newer-tampered"}
    assert "broken" in caplog.text
    assert family_path(store).name == "newer-tampered"  # the newest complete one (hashes come at load)
    assert open_family(store).family_id == "good"  # the newest that verifies
    assert "newer-incomplete" in caplog.text and "newer-tampered" in caplog.text
    with pytest.raises(StoreError, match="does not match its sha256"):
        open_family(store, "newer-tampered")


def pmerge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models_store.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).parents[2])


def test_store_ls_skips_bad_directories_and_refuses_a_wrong_path(tmp_path):
    store = damaged_store(tmp_path / "store")
    done = pmerge("store", "ls", "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == ["newer-incomplete", "newer-tampered", "good"]
    assert "broken" in done.stderr
    wrong = pmerge("store", "ls", "--store", str(tmp_path / "nowhere"))
    assert wrong.returncode == 2 and "no store at" in wrong.stderr


def test_serve_without_family_picks_the_newest_valid_one(tmp_path):
    store = damaged_store(tmp_path / "store")
    app = create_app(Settings(store=store, device="cpu", download_cache_dir=tmp_path / "dl"))
    with running_server(app) as url:
        assert httpx.get(url + "/readyz").json()["family_id"] == "good"


def test_serve_exits_when_the_family_fails_verification(tmp_path):
    """It stayed alive and never ready."""
    store = damaged_store(tmp_path / "store")
    done = pmerge("serve", "--store", str(store), "--family", "newer-tampered", "--device", "cpu",
                  "--port", str(free_port()), timeout=90)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "could not load the family" in done.stderr and "sha256" in done.stderr


def test_serve_says_the_port_is_taken_before_loading(tmp_path, store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = pmerge("serve", "--store", str(store), "--port", str(port), "--device", "cpu", timeout=60)
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in done.stderr, done.stderr
    assert "serving" not in done.stderr


def test_a_bad_setting_names_its_flag_and_its_variable(store):
    done = subprocess.run([sys.executable, "-m", "models_store.cli", "serve", "--store", str(store)],
                          capture_output=True, text=True, timeout=60, env=os.environ | {"PMERGE_MAX_BATCH": "0"})
    assert done.returncode == 1
    assert "pmerge serve: error: --max-batch / PMERGE_MAX_BATCH: Input should be greater than or equal to 1" \
        in done.stderr, done.stderr


@pytest.mark.parametrize("flags,message", [
    (["--replicas", "2"], "--replicas need --ray"),
    (["--ray", "--autoscale", "3,1"], "--autoscale '3,1': need 0 <= MIN <= MAX, MAX >= 1"),
    (["--ray", "--autoscale", "two"], "--autoscale 'two': expected MIN,MAX"),
])
def test_ray_flags_that_cannot_work_are_refused_before_anything_starts(store, flags, message):
    done = pmerge("serve", "--store", str(store), "--device", "cpu", *flags, timeout=60)
    assert done.returncode != 0 and f"pmerge serve: error: {message}" in done.stderr, done.stderr


# --- 11. status nits ----------------------------------------------------------------------------

def test_too_many_files_is_413(settings):
    few = settings.replace(**{"max_files": 2})
    with running_server(create_app(few)) as url:
        files = [("files", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)]
        r = httpx.post(url + "/classify", files=files, timeout=30)
        assert r.status_code == 413 and "at most 2 files" in r.json()["detail"], r.text
        assert r.text.endswith("}\n")


def test_openapi_documents_the_preference_grammar_and_at_least_one_file(settings):
    spec = create_app(settings).openapi()
    params = {p["name"]: p for p in spec["paths"]["/classify"]["post"]["parameters"]}
    assert "pattern" in params["pref"]["schema"] or any("pattern" in s for s in params["pref"]["schema"].get("anyOf", []))
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["minItems"] == 1
    path_params = spec["paths"]["/models/{pref}"]["get"]["parameters"]
    assert path_params[0]["schema"]["pattern"]


def test_error_bodies_are_uniform_and_name_the_problem(settings):
    """The 415 detail showed a BytesIO repr; the 413 from the body bound was formatted apart from
    the other errors; JSON bodies had no trailing newline; /family showed the server's zoo path."""
    small = settings.replace(**{"max_upload_bytes": 1000})
    with running_server(create_app(small)) as url:
        r = classify(url, b"hello, text")
        assert r.status_code == 415 and "BytesIO" not in r.text and "none of PNG" in r.json()["detail"]
        too_big = classify(url, b"x" * 5000)
        assert too_big.status_code == 413
        for response in (r, too_big, httpx.get(url + "/family"), classify(url, png_bytes(0))):
            assert response.text.endswith("}\n") and "\n" not in response.text[:-1], response.text[:200]
        assert too_big.text == json.dumps(too_big.json(), separators=(",", ":")) + "\n"
        assert r.text == json.dumps(r.json(), separators=(",", ":")) + "\n"
    app = create_app(settings)
    zoo_path = "/srv/secret/zoos/demo-zoo"
    with running_server(app) as url:
        app.state.runtime.families.default.family.manifest.zoo = zoo_path
        assert httpx.get(url + "/family").json()["zoo"] == "demo-zoo"
