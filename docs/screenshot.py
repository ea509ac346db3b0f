"""Makes docs/ui.png, the README's picture of the page at /ui: the demo family (after `make demo`,
and `pmerge train ta-pref ...` and `pmerge front` on it for the comparison), a digit uploaded, the
preference at 0.7 on digits.

    .venv/bin/python docs/screenshot.py [--dir runs/demo]
"""
from __future__ import annotations

import argparse
import shutil
import threading
import time
import tempfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from service.app import create_app
from service.server import uvicorn_config
from service.settings import Settings
from trainer.demo import DEMO_LEARNER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="runs/demo")
    parser.add_argument("--out", default=str(Path(__file__).with_name("ui.png")))
    args = parser.parse_args()
    import uvicorn
    from playwright.sync_api import sync_playwright
    from sklearn.datasets import load_digits

    store = Path(args.dir) / "families"
    demo = next(d.name for d in sorted(store.iterdir()) if d.name.startswith(f"{DEMO_LEARNER}-"))  # the demo's own
    settings = Settings(store=store, family=demo, device="cpu", port=8765, download_cache_dir=Path(tempfile.mkdtemp()))
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = "http://127.0.0.1:8765"
    while True:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    digit = Path(tempfile.mkdtemp()) / "digit.png"
    Image.fromarray((load_digits().images[7] * 15).astype(np.uint8)).resize((64, 64)).save(digit)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1400, "height": 980})
        page.goto(url + "/ui")
        page.wait_for_selector('[data-testid="front"] path.point[data-preference]')
        others = page.locator('#compare input[type="checkbox"]')
        if others.count():
            others.first.check()
        page.set_input_files('[data-testid="images"]', str(digit))
        page.fill('[data-testid="preference"]', "digits:0.7,glyphs:0.1,shapes:0.1,patterns:0.1")
        page.press('[data-testid="preference"]', "Enter")
        page.wait_for_selector('[data-testid="predictions"] [data-task]')
        page.wait_for_timeout(800)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    server.should_exit = True
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
