"""The download cache without HTTP: file layout, built once, LRU bound."""
import json
import threading

import torch
from safetensors import safe_open
from safetensors.torch import load as load_file_bytes
from safetensors.torch import load_file

from models_store.preference import from_weights
from models_store.tower import build_tower
from models_store.merged import checkpoint_size
from models_store.safetensors_stream import stream_chunks
from service.engine.downloads import DownloadCache, download_key


def test_stream_writer_matches_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).bfloat16(),
               "s": torch.tensor(1.5), "e": torch.zeros(0, 3), "m": torch.tensor([True, False])}
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as f:
        for chunk in stream_chunks([(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], tensors.items(),
                                   {"k": "v"}):
            f.write(chunk)
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"k": "v"}


def test_checkpoint_layout_and_cache(family, tmp_path):
    cache = DownloadCache(tmp_path / "dl", 1 << 30, family)
    pref = family.preference("digits:0.7,fashion:0.3")
    got = cache.get(pref)
    data = got.file.read()
    got.file.close()
    assert got.built and got.size == len(data) and got.etag == f'"{download_key(family, pref)[0]}"'
    path = tmp_path / "dl" / f"{download_key(family, pref)[0]}.safetensors"
    state = load_file(str(path))
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    build_tower(family.manifest.architecture).load_state_dict(visual, strict=True)
    merged = family.materialize(pref)
    assert all(torch.equal(visual[k], merged[k]) for k in merged)
    assert torch.equal(state["heads.digits.weight"], family.heads["digits"].weight)
    assert "heads.fashion.bias" not in state and "heads.letters.bias" in state
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["family_id"] == family.family_id
    assert json.loads(meta["preference"]) == {"digits": 0.7, "fashion": 0.3, "letters": 0.0}
    assert json.loads(meta["architecture"]) == family.manifest.architecture
    again = cache.get(family.preference("0.7,0.3,0"))  # same canonical preference, other spelling
    again.file.close()
    assert not again.built and cache.builds == 1 and cache.hits == 1


def test_concurrent_requests_build_once(family, tmp_path):
    cache = DownloadCache(tmp_path / "dl", 1 << 30, family)
    pref = family.preference("1,2,3")
    results = []

    def fetch():
        f = cache.get(pref)
        results.append(f.file.read())
        f.file.close()

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.builds == 1 and cache.hits == 7 and len(set(results)) == 1


def test_lru_eviction_keeps_the_bound(family, tmp_path):
    first = DownloadCache(tmp_path / "probe", 1 << 30, family).get(family.preference("1,0,0"))
    first.file.close()
    size = first.size
    cache = DownloadCache(tmp_path / "dl", 2 * size + size // 2, family)  # room for two files
    prefs = [family.preference(p) for p in ("1,0,0", "0,1,0", "0,0,1")]
    for p in prefs[:2]:
        cache.get(p).file.close()
    cache.get(prefs[0]).file.close()  # touch: prefs[1] is now least recently used
    cache.get(prefs[2]).file.close()
    names = {p.name for p, _ in cache.entries()}
    key = lambda p: f"{download_key(family, p)[0]}.safetensors"  # noqa: E731
    assert names == {key(prefs[0]), key(prefs[2])}
    assert sum(st.st_size for _, st in cache.entries()) <= cache.max_bytes
    # a file bigger than the whole bound is still served, streamed as it is made, and never kept
    tiny = DownloadCache(tmp_path / "tiny", 10, family)
    for p in prefs:
        f = tiny.get(p)
        data = b"".join(f.chunks())
        assert len(data) == f.size and f.built
        assert load_file_bytes(data).keys() == load_file(str(cache.root / key(prefs[0]))).keys()
    assert tiny.entries() == [] and tiny.builds == 3


def test_concurrent_builds_never_pass_the_bound(family, tmp_path):
    """Builds in progress count: 8 threads building 8 different checkpoints with room for two.
    Before the bound counted them, every build ran at once and the cache held up to 8 files."""
    size = checkpoint_size(family, family.preference("1,0,0"))
    cache = DownloadCache(tmp_path / "dl", 2 * size + size // 2, family)
    peak, stop = [0], threading.Event()

    def on_disk() -> int:
        total = 0
        for p in cache.root.iterdir():
            try:
                total += p.stat().st_size
            except FileNotFoundError:  # renamed or evicted meanwhile
                pass
        return total

    def watch():  # what is on disk in the cache directory, temporary files of builds included
        while not stop.is_set():
            peak[0] = max(peak[0], on_disk())

    prefs = [family.preference(",".join(str(x) for x in (i + 1, 8 - i, 1))) for i in range(8)]
    sizes = {checkpoint_size(family, p) for p in prefs}
    assert max(sizes) <= size + 16  # preferences differ only in the metadata's text
    results = {}

    def fetch(p):
        f = cache.get(p)
        results[p.canonical] = b"".join(f.chunks())

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=fetch, args=(p,)) for p in prefs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert len(results) == 8 and all(len(v) == checkpoint_size(family, p) for p, v in zip(prefs, results.values()))
    assert peak[0] <= cache.max_bytes, (peak[0], cache.max_bytes)
    assert cache.builds == 8


def test_preference_text_is_never_a_path(family):
    pref = from_weights([1, 1, 1], family.tasks)
    assert "/" not in download_key(family, pref)[0] and len(download_key(family, pref)[0]) == 32


def test_pmerge_export_writes_the_bytes_the_service_serves(store, family, tmp_path):
    """`pmerge export` is the download without the service: byte-identical files."""
    import httpx

    from service.http.app import create_app
    from service.settings import Settings
    from svc_helpers import running_server
    from models_store.cli import main

    app = create_app(Settings(store=store, family=family.family_id, device="cpu", download_cache_dir=tmp_path / "dl"))
    with running_server(app) as url:
        served = httpx.get(f"{url}/models/digits:0.7,letters:0.3", timeout=30)
    assert served.status_code == 200
    out = tmp_path / "exported.safetensors"
    main(["export", "--store", str(store), "--family", family.family_id, "--pref", "0.7,0,0.3", "--out", str(out)])
    assert out.read_bytes() == served.content


def test_a_cache_filled_by_a_build_that_materialised_otherwise_is_not_served(store, family, tmp_path, monkeypatch):
    """A store's download cache outlives the code that filled it: a file made by an earlier build's
    materialisation (here: other tensors under the old key) is never served once the kind's
    materialisation version changes; the ETag changes with it."""
    import httpx

    from models_store import kinds
    from service.http.app import create_app
    from service.settings import Settings
    from svc_helpers import running_server

    settings = Settings(store=store, family=family.family_id, device="cpu", download_cache_dir=tmp_path / "dl")
    pref = family.preference("digits:0.7,fashion:0.3")
    with running_server(create_app(settings)) as url:
        first = httpx.get(f"{url}/models/{pref.canonical}", timeout=60)
        other = httpx.get(f"{url}/models/1,0,0", timeout=60)
    assert first.status_code == other.status_code == 200
    stale = tmp_path / "dl" / f"{first.headers['etag'].strip(chr(34))}.safetensors"
    stale.write_bytes(other.content)  # what an earlier build made for this preference
    kind = family.manifest.kind
    monkeypatch.setitem(kinds.MATERIALIZATION, kind, kinds.MATERIALIZATION[kind] + 1)
    with running_server(create_app(settings)) as url:
        now = httpx.get(f"{url}/models/{pref.canonical}", timeout=60)
    assert now.status_code == 200 and now.headers["etag"] != first.headers["etag"]
    served = load_file_bytes(now.content)
    merged = family.materialize(pref)
    assert all(torch.allclose(served[f"visual.{k}"], v, atol=1e-6) for k, v in merged.items())
