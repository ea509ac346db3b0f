"""The page at /ui in a real browser (Debian's chromium driven by Playwright) against a real server:
what it shows is what the API answers, it asks no other host, and it works behind an API key, for
every kind and a store of several families."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from models_store.cli import main
from models_store.family import now_iso
from models_store.fronts import FrontPoint, StoredFront, write_front
from models_store.preference import parse_preference
from models_store.simplex import simplex_grid
from service.http.app import create_app
from service.settings import Settings

from svc_helpers import (FAMILY_ID, FEATURE_MAP_ID, POINT_SET_ID, TASKS, make_family, make_feature_map_family,
                         make_point_set_family, png_bytes, running_server)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# CI installs chromium (.ci/run) and must run these; a developer without it is told why they are skipped
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed: apt-get install chromium")
KEY = "ui-key"


def a_front(family_id: str, tasks: list[str]) -> StoredFront:
    """A front at the simplex grid's points (accuracies made up: the page only draws them)."""
    points = [FrontPoint(preference=p.canonical, accuracy={t: 0.3 + 0.6 * w for t, w in zip(tasks, p.weights)},
                         on_front=True) for p in simplex_grid(tasks, 2)]
    return StoredFront(family_id=family_id, tasks=tasks, created=now_iso(), hypervolume=0.2, points=points)


ANCHORED_ID = "react-anchored-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("ui-store")
    make_family(store)
    make_point_set_family(store)
    make_feature_map_family(store)
    make_feature_map_family(store, family_id=ANCHORED_ID, anchor=0.6)
    for family_id in (FAMILY_ID, POINT_SET_ID):
        write_front(store, a_front(family_id, list(TASKS)))
    images = store.parent / "ui-images"
    images.mkdir(exist_ok=True)
    for i in range(3):
        (images / f"{i}.png").write_bytes(png_bytes(i))
    return store


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, url: str, requests: list[str]):
    """The page at /ui; `page.problems` collects its uncaught errors and the browser's policy refusals."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.problems = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: page.problems.append(f"uncaught: {e}"))
    page.on("console", lambda m: page.problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(url + "/ui")
    return page


def classify(url: str, family_id: str, pref: str, image: bytes, headers: dict | None = None) -> dict:
    answer = httpx.post(f"{url}/families/{family_id}/classify", params={"pref": pref, "top_k": 3},
                        files=[("files", ("0.png", image, "image/png"))], headers=headers or {})
    assert answer.status_code == 200, answer.text
    return answer.json()


def shown(page) -> dict[tuple[str, str], float]:
    bars = page.locator('[data-testid="predictions"] [data-task]')
    return {(b.get_attribute("data-task"), b.get_attribute("data-label")): float(b.get_attribute("data-probability"))
            for b in bars.all()}


def wait_for_preference(page, pref: str) -> None:
    page.wait_for_selector(f'[data-testid="predictions"][data-preference="{pref}"]', timeout=20000)


def test_the_page_shows_what_the_api_answers(store, browser, tmp_path):
    app = create_app(Settings(store=store, family=FAMILY_ID, device="cpu", download_cache_dir=tmp_path / "dl"))
    requests: list[str] = []
    images = store.parent / "ui-images"
    with running_server(app) as url:
        page = open_page(browser, url, requests)
        page.wait_for_selector('[data-testid="front"] path.point[data-preference]')
        # a typed preference, in a form the API takes, and an uploaded image
        page.set_input_files('[data-testid="images"]', str(images / "0.png"))
        page.fill('[data-testid="preference"]', "0.7,0.2,0.1")
        page.press('[data-testid="preference"]', "Enter")
        pref = parse_preference("0.7,0.2,0.1", list(TASKS)).canonical
        wait_for_preference(page, pref)
        expected = classify(url, FAMILY_ID, pref, (images / "0.png").read_bytes())["results"][0]["predictions"]
        got = shown(page)
        assert len(got) == sum(min(3, len(c)) for c in TASKS.values())
        for task, top in expected.items():
            for p in top:
                assert got[(task, p["label"])] == pytest.approx(p["probability"], abs=1e-4)

        # a slider: the preference stays on the simplex, and the image is classified again for it
        slider = page.locator('[data-testid="slider-fashion"]')
        slider.evaluate("(s) => { s.value = 0.5; s.dispatchEvent(new Event('input', {bubbles: true})); }")
        moved = page.input_value('[data-testid="preference"]')
        weights = parse_preference(moved, list(TASKS)).weights
        assert weights[1] == pytest.approx(0.5) and sum(weights) == pytest.approx(1.0, abs=1e-5)
        assert sum(float(page.input_value(f'[data-testid="slider-{t}"]')) for t in TASKS) == pytest.approx(1, abs=1e-3)
        wait_for_preference(page, moved)
        again = classify(url, FAMILY_ID, moved, (images / "0.png").read_bytes())["results"][0]["predictions"]
        assert shown(page)[("fashion", again["fashion"][0]["label"])] == pytest.approx(
            again["fashion"][0]["probability"], abs=1e-4)

        # clicking a point of the front takes its preference
        point = page.locator('[data-testid="front"] path.point[data-preference]').nth(2)
        target = point.get_attribute("data-preference")
        box = point.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function(f"() => document.querySelector('[data-testid=preference]').value === '{target}'")
        wait_for_preference(page, target)

        # the download link: the bytes GET /models/<pref> serves
        href = page.get_attribute('[data-testid="download"]', "href")
        with page.expect_download() as started:
            page.click('[data-testid="download"]')
        downloaded = Path(started.value.path()).read_bytes()
        assert downloaded == httpx.get(url + href).content == httpx.get(
            f"{url}/families/{FAMILY_ID}/models/{target}").content

        # a new task: select's preference, applied to the sliders
        page.set_input_files('[data-testid="select-images"]', [str(images / f"{i}.png") for i in range(3)])
        page.wait_for_function("() => document.querySelector('[data-testid=selected]').textContent.length > 0")
        selected = page.text_content('[data-testid="selected"]')
        answer = httpx.post(f"{url}/families/{FAMILY_ID}/select",
                            files=[("files", (f"{i}.png", (images / f"{i}.png").read_bytes(), "image/png"))
                                   for i in range(3)])
        assert selected == answer.json()["selected"]["preference"]
        page.wait_for_function(f"() => document.querySelector('[data-testid=preference]').value === '{selected}'")
        assert page.problems == []  # everything above ran under the page's Content-Security-Policy
        page.close()
    assert requests and all(r.startswith(url) or r.startswith("blob:") for r in requests), \
        [r for r in requests if not r.startswith(url)]


def test_every_kind_and_several_families(store, browser, tmp_path):
    app = create_app(Settings(store=store, device="cpu", download_cache_dir=tmp_path / "dl"))
    image = (store.parent / "ui-images" / "1.png")
    with running_server(app) as url:
        page = open_page(browser, url, [])
        page.wait_for_selector('[data-testid="family"] option', state="attached")
        options = page.locator('[data-testid="family"] option').evaluate_all("(o) => o.map((x) => x.value)")
        assert set(options) == {FAMILY_ID, POINT_SET_ID, FEATURE_MAP_ID, ANCHORED_ID}
        page.set_input_files('[data-testid="images"]', str(image))
        for family_id in (POINT_SET_ID, FEATURE_MAP_ID, ANCHORED_ID, FAMILY_ID):  # letters:1 is anchored there
            page.select_option('[data-testid="family"]', family_id)
            page.wait_for_function(  # the family is loaded: its download link is there
                f"() => document.querySelector('[data-testid=download]').getAttribute('href').includes('{family_id}')")
            # what the family costs, as /family says it: on disk and on the device
            info = httpx.get(f"{url}/families/{family_id}/family", timeout=30).json()
            cost = page.locator('[data-testid="family-cost"]').inner_text()
            assert f"on disk {info['disk_bytes'] / 1e6:.2f} MB" in cost and "heads.safetensors" in cost, cost
            assert f"when served {info['resident_bytes'] / 1e6:.2f} MB" in cost, cost
            page.fill('[data-testid="preference"]', "letters:1")
            page.press('[data-testid="preference"]', "Enter")
            pref = parse_preference("letters:1", list(TASKS)).canonical
            wait_for_preference(page, pref)
            expected = classify(url, family_id, pref, image.read_bytes())["results"][0]["predictions"]
            page.wait_for_function(
                "(p) => document.querySelector(`[data-task=letters][data-label='${p.label}']`)"
                "&& Math.abs(parseFloat(document.querySelector(`[data-task=letters][data-label='${p.label}']`)"
                ".dataset.probability) - p.probability) < 1e-4", arg=expected["letters"][0])
        # another family of the store on the same axes
        page.select_option('[data-testid="family"]', FAMILY_ID)
        page.check(f'[data-testid="compare-{POINT_SET_ID}"]')
        page.wait_for_function("() => document.querySelectorAll('#front .scatterlayer .trace').length >= 3")
        page.close()


def test_the_page_is_served_with_a_strict_policy_and_survives_a_bad_front(store, browser, tmp_path):
    """No frame may hold the page and it runs only its own scripts; a front file with a malformed
    preference is refused by /front by name, and the page says so instead of throwing."""
    from models_store.fronts import front_path
    bad = a_front(ANCHORED_ID, list(TASKS))
    bad.points[1].preference = "digits:2,cars:1"
    write_front(store, bad)
    app = create_app(Settings(store=store, family=ANCHORED_ID, device="cpu", download_cache_dir=tmp_path / "dl"))
    try:
        with running_server(app) as url:
            headers = httpx.get(f"{url}/ui").headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert "default-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
            refused = httpx.get(f"{url}/front")
            assert refused.status_code == 503 and "points[1]" in refused.json()["detail"], refused.text
            assert "unknown task 'cars'" in refused.json()["detail"]
            page = open_page(browser, url, [])
            page.wait_for_function("() => document.getElementById('front-note').textContent.includes('points[1]')")
            page.set_input_files('[data-testid="images"]', str(store.parent / "ui-images" / "0.png"))
            wait_for_preference(page, parse_preference(None, list(TASKS)).canonical)  # the rest of the page works
            assert page.problems == []
            page.close()
    finally:
        front_path(store, ANCHORED_ID).unlink()


def test_behind_an_api_key(store, browser, tmp_path):
    app = create_app(Settings(store=store, family=FAMILY_ID, device="cpu", api_key=SecretStr(KEY),
                              download_cache_dir=tmp_path / "dl"))
    with running_server(app) as url:
        page = open_page(browser, url, [])
        page.wait_for_function("() => document.getElementById('error').textContent.includes('API key')")
        page.fill('[data-testid="api-key"]', KEY)
        page.press('[data-testid="api-key"]', "Tab")
        page.wait_for_selector('[data-testid="front"] path.point[data-preference]')
        page.set_input_files('[data-testid="images"]', str(store.parent / "ui-images" / "0.png"))
        equal = parse_preference(None, list(TASKS)).canonical
        wait_for_preference(page, equal)
        with page.expect_download() as started:
            page.click('[data-testid="download"]')
        headers = {"authorization": f"Bearer {KEY}"}
        assert Path(started.value.path()).read_bytes() == httpx.get(
            f"{url}/families/{FAMILY_ID}/models/{equal}", headers=headers).content
        assert httpx.get(f"{url}/families").status_code == 401  # the page's key opens nothing for others
        page.close()


def test_pmerge_front_output_feeds_the_page(store, tmp_path):
    """The stored front the page draws is the one `pmerge front` keeps (tests/trainer/test_front.py
    checks the writer); here: a family without one says which command makes it."""
    app = create_app(Settings(store=store, family=FEATURE_MAP_ID, device="cpu", download_cache_dir=tmp_path / "d"))
    with running_server(app) as url:
        missing = httpx.get(f"{url}/front")
    assert missing.status_code == 404 and "pmerge front" in missing.json()["detail"]
    assert main is not None
