"""service/engine/families.py without HTTP: loading once, eviction order, nothing evicted in use, the bound."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from service.errors import NotReady, UnknownFamily
from service.engine.families import Families, Served
from service.settings import Settings, parse_family_ids


class FakeEngine:
    def __init__(self):
        self.queued, self.stopped = 0, False
        self.config = SimpleNamespace(device=SimpleNamespace(type="cpu"))

    def stop(self):
        self.stopped = True


def fake_served(family) -> Served:
    return Served(family, FakeEngine(), None, SimpleNamespace(digest=""))  # what the routes would see: unused here


def publish(store, name: str) -> None:
    (store / name).mkdir()
    (store / name / "manifest.json").write_text("{}")


def opener(store):
    return lambda family_id: SimpleNamespace(family_id=family_id, path=store / family_id)


@pytest.fixture
def families(tmp_path):
    for name in ("a", "b", "c", "d"):
        publish(tmp_path, name)
    loaded = []
    plain = opener(tmp_path)

    def open_family(family_id):
        time.sleep(0.05)  # long enough for concurrent first requests to meet
        loaded.append(family_id)
        return plain(family_id)
    f = Families(tmp_path, None, 3, open=open_family, serve=fake_served)
    f.set_default(fake_served(plain("a")))
    f.loaded = loaded
    return f


def test_concurrent_first_requests_load_a_family_once(families):
    got = []
    threads = [threading.Thread(target=lambda: got.append(families.acquire("b"))) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert families.loaded == ["b"] and len({id(s) for s in got}) == 1 and got[0].inflight == 8


def test_the_least_recently_used_idle_family_goes_never_the_default_nor_one_in_use(families):
    b = families.acquire("b")
    c = families.acquire("c")
    families.release(c)
    d = families.acquire("d")  # full (a, b, c): b is in use, a is the default, so c goes
    assert set(families.resident) == {"a", "b", "d"} and c.engine.stopped and not b.engine.stopped
    families.release(d)
    families.acquire("c")  # c again: d is now the idle one
    assert set(families.resident) == {"a", "b", "c"} and d.engine.stopped and families.evictions == 2


def test_all_in_use_is_a_503_and_unknown_ids_a_404(families):
    held = [families.acquire("b"), families.acquire("c")]
    with pytest.raises(NotReady, match="all 3 resident families are in use"):
        families.acquire("d")
    families.release(held[0])
    assert families.acquire("d").family_id == "d"
    for bad in ("zz", "../a", ".a"):
        with pytest.raises(UnknownFamily, match=f"{bad!r}".replace(".", r"\.")):
            families.acquire(bad)


def test_the_families_setting_limits_what_is_served_and_names_a_bad_id(tmp_path):
    assert parse_family_ids(" a, b ,") == ["a", "b"] and parse_family_ids("") is None
    with pytest.raises(ValueError, match="'../b' is not a family id"):
        Settings(families="a,../b")
    publish(tmp_path, "b")
    f = Families(tmp_path, ["a"], 2, open=opener(tmp_path), serve=fake_served)
    with pytest.raises(UnknownFamily, match="'b' is not served here"):
        f.acquire("b")
