"""`pmerge serve --ray`'s deployment (service/ray_serve.py) on a local Ray cluster on the CPU: two
replicas behind Serve's HTTP proxy answer 100 concurrent mixed-preference requests over two
families exactly as the single-process server does, and both replicas answer."""
from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from service.http.app import create_app
from service.client import MULTIPLEXED_MODEL_ID as HEADER
from service.ray_serve import application
from service.settings import Settings

from svc_helpers import FAMILY_ID, POINT_SET_ID, free_port, make_family, make_point_set_family, png_bytes, running_server

PREFS = ["digits:1", "fashion:1", "0.1,0.1,0.8", "1,1,1", "digits:0.45,fashion:0.45,letters:0.1", "0.7,0.3,0"]


@pytest.fixture(scope="module")
def ray_port():
    import ray
    from ray import serve
    ray.init(num_cpus=4, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def send(url: str, jobs) -> list[httpx.Response]:
    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(
                client.post(f"{prefix}/classify", params={"pref": pref, "top_k": 3}, headers=headers,
                            files=[("files", ("i.png", image, "image/png"))])
                for prefix, headers, image, pref in jobs))
    return asyncio.run(run())


def test_two_replicas_answer_as_the_single_process_server(ray_port, tmp_path):
    from ray import serve
    store = tmp_path / "store"
    make_family(store)
    make_point_set_family(store)
    settings = Settings(store=store, family=FAMILY_ID, device="cpu", max_wait_ms=20,
                        download_cache_dir=tmp_path / "downloads")
    serve.run(application(settings, replicas=2, cpus_per_replica=1), name="pmerge", route_prefix="/")
    images = [png_bytes(700 + i) for i in range(10)]
    routes = [("", {}), (f"/families/{POINT_SET_ID}", {HEADER: POINT_SET_ID})]
    jobs = [(*routes[i % 3 == 0], images[i % len(images)], PREFS[i % len(PREFS)]) for i in range(100)]
    ray_answers = send(f"http://127.0.0.1:{ray_port}", jobs)
    with running_server(create_app(settings)) as url:
        single = send(url, jobs)
    assert [r.status_code for r in ray_answers] == [200] * len(jobs), {r.text for r in ray_answers if r.status_code != 200}
    assert [r.status_code for r in single] == [200] * len(jobs)
    for ours, theirs in zip(ray_answers, single):
        a, b = ours.json()["results"][0]["predictions"], theirs.json()["results"][0]["predictions"]
        assert ours.json()["family_id"] == theirs.json()["family_id"]
        assert {t: [x["index"] for x in labels] for t, labels in a.items()} == \
            {t: [x["index"] for x in labels] for t, labels in b.items()}
        assert all(abs(x["probability"] - y["probability"]) <= 1e-5
                   for t in a for x, y in zip(a[t], b[t]))
    replicas = Counter(r.headers["x-pmerge-replica"] for r in ray_answers)
    assert len(replicas) == 2, replicas
    assert "x-pmerge-replica" not in single[0].headers
