"""A format-1 family (tests/data/format-1, laid out by the format-1 writer: rank and targets at the
top of the manifest, the zoo in hyperparameters) keeps loading as kind `lowrank`, and serves and
downloads exactly as before: the expected bytes and logits were taken with the format-1 code
(dca4427) on these files."""
import hashlib
import shutil
from pathlib import Path

import httpx

from models_store.family import Family
from service.app import create_app
from service.settings import Settings

from svc_helpers import running_server

FORMAT_1 = Path(__file__).parents[1] / "data" / "format-1"
FAMILY = "fam-format-1"
DOWNLOADS = {"1,0,0": "15f9c3dc83dec42df72d1e8a9590f7c25241d0d149e702c6b016401bdbeba1d7",
             "digits:0.7,fashion:0.3": "24ece5d0619526a6488ee600bb44ac105c7986ac870ba0b8fe5208dd4f953d42"}
def test_format_1_serves_and_downloads_the_same_bytes(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(FORMAT_1, store)
    app = create_app(Settings(store=store, device="cpu", download_cache_dir=tmp_path / "dl"))
    with running_server(app) as url:
        fam = httpx.get(url + "/family").json()
        assert fam["family_id"] == FAMILY and fam["kind"] == "lowrank" and fam["rank"] == 4
        for pref, digest in DOWNLOADS.items():
            r = httpx.get(f"{url}/models/{pref}", timeout=30)
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == digest, pref
    assert Family(store / FAMILY).manifest.format == 1  # read, never rewritten
