"""Fixtures of the service tests: a small random family (micro tower, 3 tasks) in a temporary store."""
from pathlib import Path

import pytest

from models_store.family import Family
from models_store.store import open_family
from svc_helpers import FAMILY_ID, make_family


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    make_family(root)
    return root


@pytest.fixture(scope="session")
def family(store) -> Family:
    return open_family(store, FAMILY_ID)
