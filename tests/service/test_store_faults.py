"""A store that changes or breaks under a running service, through a real uvicorn server: an
impostor directory poisons nothing, a family that fails to load is a 503 that names it (loaded once
for a burst, never at a healthy family's expense), a removed family is a 404 on its next request, an
id too long for a file name is a 404, a full disk in the download cache evicts and then says 507,
and /metrics tells the named routes and the family events apart."""
from __future__ import annotations

import asyncio
import errno
import json
import shutil
import time

import httpx
import pytest

from models_store.atomic import atomic_file
from models_store.family import MANIFEST
from models_store.merged import checkpoint_chunks
from models_store.store import open_family, remove_family
from service.engine import downloads
from service.engine import families as families_module
from service.http.app import create_app
from service.engine.families import STORE_CHECK_S
from service.settings import Settings

from svc_helpers import FAMILY_ID, make_family, png_bytes, running_server

PREF = "digits:0.6,fashion:0.4"


def settings(store, tmp_path, **more) -> Settings:
    return Settings(store=store, family=FAMILY_ID, device="cpu", max_batch=8, max_wait_ms=5,
                    download_cache_dir=tmp_path / "downloads", **more)


def exported(store, family_id: str, pref: str) -> bytes:
    family = open_family(store, family_id)
    return b"".join(bytes(c) for c in checkpoint_chunks(family, family.preference(pref)))


def classify(url: str, path: str = "") -> httpx.Response:
    return httpx.post(f"{url}{path}/classify", files=[("files", ("i.png", png_bytes(1)))], timeout=60)


def metric(url: str, sample: str) -> float:
    """The value of one sample of /metrics, named with its labels as Prometheus prints it."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {sample}")


def test_a_directory_claiming_another_familys_id_poisons_nothing(tmp_path):
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    make_family(store)
    make_family(elsewhere, seed=7)  # the same id, other weights: its own hashes verify
    shutil.copytree(elsewhere / FAMILY_ID, store / "impostor")
    with running_server(create_app(settings(store, tmp_path))) as url:
        listed = [f["family_id"] for f in httpx.get(f"{url}/families").json()]
        assert listed == [FAMILY_ID]  # once, and not the impostor
        r = httpx.get(f"{url}/families/impostor/models/{PREF}", timeout=60)
        assert r.status_code == 503 and r.json()["error"] == "family_unavailable", r.text
        assert "claims family id 'fam-test', but its directory is 'impostor'" in r.json()["detail"]
        genuine = httpx.get(f"{url}/models/{PREF}", timeout=60)
        named = httpx.get(f"{url}/families/{FAMILY_ID}/models/{PREF}", timeout=60)
    assert genuine.content == named.content == exported(store, FAMILY_ID, PREF)


def corrupt(store, family_id: str) -> None:
    """One flipped byte in the family's largest tensor file."""
    path = max((p for p in (store / family_id).iterdir() if p.suffix == ".safetensors"), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_family_that_fails_to_load_is_a_503_that_names_it_loaded_once_and_costs_no_resident(tmp_path, monkeypatch):
    store = tmp_path / "store"
    for i, family_id in enumerate((FAMILY_ID, "other", "broken", "half")):
        make_family(store, family_id, seed=i)
    corrupt(store, "broken")
    (store / "half" / "heads.safetensors").unlink()  # a half-copied directory
    app = create_app(settings(store, tmp_path, max_families=2))
    with running_server(app) as url:
        families = app.state.runtime.families
        assert classify(url, "/families/other").status_code == 200
        assert set(families.resident) == {FAMILY_ID, "other"}

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/families/broken/classify",
                                                          files=[("files", ("i.png", png_bytes(2)))])
                                              for _ in range(30)))
        answers = asyncio.run(burst())
        assert {r.status_code for r in answers} == {503}
        body = answers[0].json()
        assert body["error"] == "family_unavailable" and "'broken'" in body["detail"]
        assert "does not match its sha256" in body["detail"] and answers[0].headers["retry-after"]
        assert metric(url, 'pmerge_family_events_total{event="load_failed"}') == 1  # 30 requests, one load
        # the healthy families stayed: nothing was evicted for a load that failed
        assert set(families.resident) == {FAMILY_ID, "other"} and families.evictions == 0
        half = classify(url, "/families/half")
        assert half.status_code == 503 and "'half'" in half.json()["detail"] and "missing file heads.safetensors" \
            in half.json()["detail"], half.text
        assert set(families.resident) == {FAMILY_ID, "other"} and families.evictions == 0
        # repaired, the failure is forgotten once its memory ends
        corrupt(store, "broken")
        monkeypatch.setattr(families_module, "FAILURE_MEMORY_S", 0.0)
        assert classify(url, "/families/broken").status_code == 200


def settle() -> None:
    """A resident family is compared with the store at most every STORE_CHECK_S: let that pass."""
    time.sleep(STORE_CHECK_S + 0.05)


def test_a_family_removed_while_resident_or_while_loading_is_a_404(tmp_path, monkeypatch):
    store = tmp_path / "store"
    make_family(store)
    make_family(store, "gone", seed=3)
    app = create_app(settings(store, tmp_path))
    with running_server(app) as url:
        assert classify(url, "/families/gone").status_code == 200
        before = httpx.get(f"{url}/families/gone/models/{PREF}").content
        remove_family(store, "gone")
        settle()
        r = classify(url, "/families/gone")
        assert r.status_code == 404 and "'gone'" in r.json()["detail"], r.text
        assert httpx.get(f"{url}/families/gone/family").status_code == 404
        assert "gone" not in app.state.runtime.families.resident
        assert metric(url, 'pmerge_family_events_total{event="unloaded"}') == 1
        # published again under the same id, with other weights: served anew, and so are its downloads
        make_family(store, "gone", seed=4)
        settle()
        assert classify(url, "/families/gone").status_code == 200
        after = httpx.get(f"{url}/families/gone/models/{PREF}").content
        assert after == exported(store, "gone", PREF) != before

        # removed while its first request loads it
        make_family(store, "fleeting", seed=5)
        runtime = app.state.runtime
        real_open = runtime.families._open

        def open_after_removal(family_id):
            remove_family(store, family_id)
            return real_open(family_id)
        monkeypatch.setattr(runtime.families, "_open", open_after_removal)
        r = classify(url, "/families/fleeting")
        assert r.status_code == 404 and "removed from the store while it loaded" in r.json()["detail"], r.text


def test_the_default_family_removed_is_a_404_and_readyz_says_why(tmp_path):
    store = tmp_path / "store"
    make_family(store)
    with running_server(create_app(settings(store, tmp_path))) as url:
        remove_family(store, FAMILY_ID)
        settle()
        assert classify(url).status_code == 404
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and "was removed or replaced" in ready.json()["detail"]
        make_family(store, seed=9)
        settle()
        assert classify(url).status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200


@pytest.mark.parametrize("family_id", ["a" * 300, "fam-test%0A", "x" * 129])
def test_an_id_that_cannot_be_a_family_is_a_404_with_a_bounded_detail(tmp_path, family_id):
    store = tmp_path / "store"
    make_family(store)
    with running_server(create_app(settings(store, tmp_path))) as url:
        for method, path in (("POST", "/classify"), ("GET", f"/models/{PREF}"), ("GET", "/family")):
            r = httpx.request(method, f"{url}/families/{family_id}{path}", timeout=30)
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"] == "unknown_family" and len(r.json()["detail"]) < 200
        assert metric(url, "pmerge_unhandled_exceptions_total") == 0


def test_a_full_disk_evicts_the_cache_then_says_507_and_keeps_no_partial_file(tmp_path, monkeypatch):
    store = tmp_path / "store"
    make_family(store)
    cache = tmp_path / "downloads"
    one = len(exported(store, FAMILY_ID, PREF))
    capacity = [int(1.5 * one)]  # a disk with room for one checkpoint
    real_write = downloads.write_checkpoint

    def write_on_a_small_disk(path, family, pref, device):
        used = sum(p.stat().st_size for p in cache.iterdir() if p.is_file())
        if used + one > capacity[0]:
            with atomic_file(path) as tmp:  # the disk fills part-way through the file
                tmp.write_bytes(b"part of a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, family, pref, device)
    monkeypatch.setattr(downloads, "write_checkpoint", write_on_a_small_disk)
    with running_server(create_app(settings(store, tmp_path))) as url:
        first = httpx.get(f"{url}/models/{PREF}")
        assert first.status_code == 200
        second = httpx.get(f"{url}/models/digits:1")  # no room: the first file is evicted, then it fits
        assert second.status_code == 200 and second.content == exported(store, FAMILY_ID, "digits:1")
        assert [p.name for p in cache.iterdir()] == [second.headers["etag"].strip('"') + ".safetensors"]
        capacity[0] = one // 2  # not even an empty cache fits one
        full = httpx.get(f"{url}/models/fashion:1")
        assert full.status_code == 507 and full.json()["error"] == "insufficient_storage", full.text
        assert "No space left on device" in full.json()["detail"]
        assert list(cache.iterdir()) == []  # nothing partial kept, and the evictable file went
        assert metric(url, "pmerge_unhandled_exceptions_total") == 0


def test_metrics_name_the_prefixed_routes_and_count_family_events(tmp_path):
    store = tmp_path / "store"
    make_family(store)
    make_family(store, "second", seed=2)
    with running_server(create_app(settings(store, tmp_path, max_families=1))) as url:
        assert classify(url).status_code == 200
        assert classify(url, "/families/second").status_code == 503  # the only place is the default's
        text = httpx.get(f"{url}/metrics").text
    assert 'route="/classify",status="200"' in text
    assert 'route="/families/{family_id}/classify",status="503"' in text
    for event in ("loaded", "load_failed", "evicted", "unloaded"):
        assert f'pmerge_family_events_total{{event="{event}"}}' in text


def test_a_manifest_id_with_a_trailing_newline_is_not_a_family_id(tmp_path):
    from models_store import StoreError
    from models_store.family import Family
    store = tmp_path / "store"
    path = make_family(store)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["family_id"] = FAMILY_ID + "\n"
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="is not a family id"):
        Family(path, verify=False)
