"""Manifests: an unknown format is refused by name, and every bad manifest is a StoreError naming it."""
import json

import pytest

from models_store import StoreError
from models_store.family import MANIFEST, Family
from models_store.zoo import Zoo



def test_unknown_formats_and_bad_manifests_name_the_file(tmp_path):
    family = tmp_path / "store" / "fam"
    family.mkdir(parents=True)
    (family / MANIFEST).write_text(json.dumps({"format": 99, "family_id": "fam"}))
    with pytest.raises(StoreError, match="unknown family format 99 .this pmerge reads format 1, 2"):
        Family(family)
    (family / MANIFEST).write_bytes(b"\xff\xfe not json")
    with pytest.raises(StoreError, match=f"{MANIFEST} cannot be read|not valid JSON"):
        Family(family)
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "zoo.json").write_text('{"format": 3}')
    with pytest.raises(StoreError, match="zoo.json is invalid: .*unknown zoo format 3 .this pmerge reads format 1, 2"):
        Zoo(tmp_path / "zoo")
    with pytest.raises(StoreError, match="missing manifest"):
        Zoo(tmp_path / "nowhere")
