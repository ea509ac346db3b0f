"""JPEGs decoded by the engine on its device (`PMERGE_DECODE=device`; nvjpeg on CUDA, the same
torchvision call on the CPU here): the answers match the host path's, and every file the device
decoder would read differently, or not at all, takes the host path with its guarantees."""
from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from models_store.preprocess import EXIF_ORIENTATION, Preprocess
from service.http.app import create_app
from service.engine.images import decode_image, decode_upload
from service.settings import Settings

from svc_helpers import FAMILY_ID, png_bytes, running_server

MAX_PIXELS = 1_000_000


def photo(seed: int, size=(96, 72), mode="RGB", **save) -> bytes:
    """A smooth picture (a photo's spectrum, not noise's) saved as JPEG."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.convert(mode).save(buf, format="JPEG", quality=92, **save)
    return buf.getvalue()


def rotated(seed: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return photo(seed, exif=exif.tobytes())


@pytest.fixture(scope="module")
def servers(store, tmp_path_factory):
    urls = {}
    apps = {d: create_app(Settings(store=store, family=FAMILY_ID, device="cpu", decode=d, max_wait_ms=5,
                                   max_image_pixels=MAX_PIXELS, download_cache_dir=tmp_path_factory.mktemp(d)))
            for d in ("host", "device")}
    with running_server(apps["host"]) as host, running_server(apps["device"]) as device:
        urls["host"], urls["device"] = host, device
        yield urls


def probabilities(url: str, files: list[tuple[str, bytes, str]], pref: str = "0.2,0.3,0.5") -> httpx.Response:
    parts = [("files", f) for f in files]
    return httpx.post(url + "/classify", params={"pref": pref, "top_k": 10}, files=parts, timeout=30)


def by_index(result: dict) -> dict[str, np.ndarray]:
    return {t: np.array([x["probability"] for x in sorted(labels, key=lambda x: x["index"])])
            for t, labels in result["predictions"].items()}


@pytest.mark.parametrize("image_size", [16, 224])
def test_device_decoding_gives_pillows_pixels(image_size):
    """Landscape and square photos to the level; a level at most where Pillow turns the passes round."""
    pre = Preprocess(image_size=image_size)
    for seed, size, mode in [(0, (96, 72), "RGB"), (1, (40, 120), "RGB"), (2, (33, 33), "L"), (3, (640, 480), "RGB"),
                             (4, (480, 640), "RGB"), (5, (1000, 700), "L")]:
        data = photo(seed, size, mode)
        host = decode_image(data, pre, MAX_PIXELS).astype(np.int16)
        device = pre.decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.device("cpu"))[0]
        diff = np.abs(host - device.numpy().astype(np.int16))
        exact = size[0] >= size[1]
        assert diff.max() <= (0 if exact else 1) and diff.mean() < 0.25, (seed, size, mode, diff.mean(), diff.max())


def test_device_decoding_in_one_channel_is_pillows_luma():
    pre = Preprocess(image_size=24, channels=1)
    data = photo(7, (120, 90))
    host = decode_image(data, pre, MAX_PIXELS)
    device = pre.decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.device("cpu"))[0]
    assert host.shape == tuple(device.shape) == (1, 24, 24) and (host == device.numpy()).all()


@pytest.mark.parametrize("name,data,device", [
    ("rgb", photo(0), True),
    ("gray", photo(1, mode="L"), True),
    ("cmyk", photo(2, mode="CMYK"), False),
    ("rotated", rotated(3), False),
    ("thin", photo(4, size=(400, 3)), False),
    ("truncated", photo(5)[:-400], False),
    ("png", png_bytes(6), False),
])
def test_only_whole_upright_rgb_or_gray_jpegs_go_to_the_device(name, data, device):
    pre = Preprocess(image_size=16)
    try:
        decoded = decode_upload(data, pre, MAX_PIXELS, name, device_jpeg=True)
    except Exception as e:  # the host path refuses a truncated file, as without the device
        assert name == "truncated" and "truncated or corrupt" in str(e)
        return
    assert (decoded.jpeg is not None) is device, name
    if not device:
        assert (decoded.pixels == decode_image(data, pre, MAX_PIXELS)).all()


def test_a_mixed_request_answers_as_the_host_path(servers):
    files = [("rgb.jpg", photo(10), "image/jpeg"), ("gray.jpg", photo(11, mode="L"), "image/jpeg"),
             ("cmyk.jpg", photo(12, mode="CMYK"), "image/jpeg"), ("rotated.jpg", rotated(13), "image/jpeg"),
             ("a.png", png_bytes(14), "image/png"), ("big.jpg", photo(15, size=(640, 480)), "image/jpeg")]
    host, device = (probabilities(servers[d], files) for d in ("host", "device"))
    assert host.status_code == device.status_code == 200, device.text
    for name, h, d in zip([f[0] for f in files], host.json()["results"], device.json()["results"], strict=True):
        hp, dp = by_index(h), by_index(d)
        worst = max(float(np.abs(hp[t] - dp[t]).max()) for t in hp)
        # the same pixels on both paths (torchvision's libjpeg-turbo decodes as Pillow's on the CPU)
        assert worst < 1e-6, (name, worst)


@pytest.mark.parametrize("data,status,words", [
    (photo(20)[:-400], 415, "truncated or corrupt"),
    (photo(21)[:300] + bytes(3000) + b"\xff\xd9", 415, "file 1"),
    (b"\xff\xd8\xff\xe0" + bytes(100), 415, "not a decodable image"),
])
def test_broken_jpegs_are_415_on_the_device_path_too(servers, data, status, words):
    for decode in ("host", "device"):
        r = probabilities(servers[decode], [("bad.jpg", data, "image/jpeg"), ("ok.jpg", photo(22), "image/jpeg")])
        assert r.status_code == status, (decode, r.text)
        assert words in r.json()["detail"], (decode, r.text)
    assert probabilities(servers["device"], [("ok.jpg", photo(23), "image/jpeg")]).status_code == 200


def test_bounds_hold_on_the_device_path(servers):
    huge = photo(30, size=(1200, 1000))  # 1.2 M pixels > MAX_PIXELS: refused from its header
    r = probabilities(servers["device"], [("huge.jpg", huge, "image/jpeg")])
    assert r.status_code == 413 and "more than the limit" in r.json()["detail"], r.text
