"""A small client of the HTTP API, on httpx, and the `pmerge classify` / `pmerge fetch` commands.

503 is retried after its Retry-After (at most `tries` times, each wait capped); every other error
becomes one line that names the status, the service's error code and its detail."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import httpx

from models_store.cli import Command

MAX_RETRY_WAIT_S = 30.0
MULTIPLEXED_MODEL_ID = "serve_multiplexed_model_id"  # Ray Serve's header


class ClientError(Exception):
    """One clear line: what failed and why."""


class Client:
    def __init__(self, url: str, api_key: Optional[str] = None, family: Optional[str] = None, tries: int = 4,
                 timeout: float = 120.0, sleep=time.sleep):
        self.base = url.rstrip("/") + (f"/families/{family}" if family else "")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if family:  # Ray Serve routes a family's requests to a replica that holds it (service/ray_serve.py)
            headers[MULTIPLEXED_MODEL_ID] = family
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self.tries, self.sleep = max(1, tries), sleep

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, method: str, path: str, stream: bool = False, **kwargs) -> httpx.Response:
        url = self.base + path
        for attempt in range(1, self.tries + 1):
            try:
                request = self.http.build_request(method, url, **kwargs)
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as e:
                raise ClientError(f"cannot reach {url}: {e}") from None
            if response.status_code != 503 or attempt == self.tries:
                break
            wait = retry_after(response)
            response.close()
            self.sleep(wait)
        if response.status_code >= 400:
            if stream:
                response.read()
            raise ClientError(describe_error(response, attempt))
        return response

    def classify(self, images: Sequence[Path], pref: Optional[str] = None, task: Optional[str] = None,
                 top_k: int = 5) -> dict:
        params = {"top_k": top_k} | ({"pref": pref} if pref else {}) | ({"task": task} if task else {})
        files = []
        for path in images:
            try:
                files.append(("files", (Path(path).name, Path(path).read_bytes())))
            except OSError as e:
                raise ClientError(f"cannot read {path}: {e.strerror}") from None
        return self._send("POST", "/classify", params=params, files=files).json()

    def fetch(self, pref: str, out: Path) -> tuple[int, str]:
        """Stream the checkpoint of `pref` to `out` (atomically); (bytes, ETag). Refused when the
        bytes received are not the Content-Length announced or no ETag came with them."""
        response = self._send("GET", f"/models/{pref}", stream=True)
        try:
            etag, length = response.headers.get("etag"), response.headers.get("content-length")
            if not etag or length is None:
                raise ClientError(f"{response.url}: the answer has no {'ETag' if not etag else 'Content-Length'}")
            tmp = out.with_name(f".{out.name}.part")
            size = 0
            with open(tmp, "wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            if size != int(length):
                tmp.unlink()
                raise ClientError(f"{response.url}: received {size} bytes, Content-Length said {length}; "
                                  f"nothing written to {out}")
            os.replace(tmp, out)
            return size, etag
        finally:
            response.close()


def retry_after(response: httpx.Response) -> float:
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def describe_error(response: httpx.Response, attempts: int) -> str:
    try:
        body = response.json()
        what = f"{body['error']}: {body['detail']}"
    except (ValueError, KeyError, TypeError):
        what = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason_phrase
    tried = f" (after {attempts} tries)" if response.status_code == 503 and attempts > 1 else ""
    return f"{response.request.method} {response.url} -> {response.status_code} {what}{tried}"


# --- commands ---------------------------------------------------------------------------------

def add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the service's base URL, e.g. http://localhost:8000")
    parser.add_argument("--family", help="a family id of GET /families (default: the service's default family)")
    parser.add_argument("--api-key", default=os.environ.get("PMERGE_API_KEY"),
                        help="sent as 'Authorization: Bearer KEY' (default: env PMERGE_API_KEY)")
    parser.add_argument("--tries", type=int, default=4, help="attempts when the service answers 503")


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection(parser)
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--pref", help="preference, 0.2,0.8 or digits:0.7,glyphs:0.3 (default: equal)")
    parser.add_argument("--task", help="the task(s) to answer, comma-separated (default: all)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the service's JSON answer")


def run_classify(args: argparse.Namespace) -> None:
    try:
        with Client(args.url, args.api_key, args.family, args.tries) as client:
            answer = client.classify(args.images, args.pref, args.task, args.top_k)
    except ClientError as e:
        raise SystemExit(f"pmerge classify: error: {e}") from None
    if args.json:
        print(json.dumps(answer, indent=2))
        return
    print(f"family {answer['family_id']}, preference {answer['preference']}")
    print("| image | task | labels (probability) |")
    print("|---|---|---|")
    for result in answer["results"]:
        for task, labels in result["predictions"].items():
            shown = ", ".join(f"{x['label']} ({x['probability']:.3f})" for x in labels)
            print(f"| {result['filename'] or result['index']} | {task} | {shown} |")


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection(parser)
    parser.add_argument("--pref", required=True, help="the preference whose merged checkpoint to download")
    parser.add_argument("--out", required=True, type=Path, help="the safetensors file to write (atomically)")


def run_fetch(args: argparse.Namespace) -> None:
    try:
        with Client(args.url, args.api_key, args.family, args.tries) as client:
            size, etag = client.fetch(args.pref, args.out)
    except ClientError as e:
        raise SystemExit(f"pmerge fetch: error: {e}") from None
    print(f"wrote {args.out} ({size} bytes, ETag {etag})")


COMMANDS = [Command("classify", "classify images with a running service (a table, or --json)",
                    add_classify_arguments, run_classify),
            Command("fetch", "download a preference's merged checkpoint from a running service",
                    add_fetch_arguments, run_fetch)]
