"""A small client of the HTTP API, on httpx, and the `pmerge classify` / `pmerge fetch` commands.

It trusts nothing a server sends: 503 is retried after its Retry-After (at most `tries` times, each
wait capped); every other error becomes one line that names the status, the service's error code
and its detail, escaped (no newline or terminal escape of a server reaches the terminal). Answers
are read up to a cap; a redirect is refused, not followed; a checkpoint is kept only when it is a
complete safetensors file whose metadata name the family and preference asked for; the commands
have an overall deadline, whatever pace a server keeps. Imports no torch: it starts at once.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import struct
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import httpx

from models_store.cli import Command

MAX_RETRY_WAIT_S = 30.0
MAX_JSON_BYTES = 64 << 20  # a /classify answer: far beyond 64 images x every task's top 100
MAX_ERROR_BYTES = 64 << 10
MAX_HEADER_BYTES = 100 << 20  # a checkpoint's safetensors header
DEADLINE_S = 600.0
MULTIPLEXED_MODEL_ID = "serve_multiplexed_model_id"  # Ray Serve's header
CHECKPOINT_TYPE = "application/octet-stream"


class ClientError(Exception):
    """One clear line: what failed and why."""


def shown(text: str | bytes, limit: int = 300) -> str:
    """Text a server controls, safe to print: control characters (newlines, terminal escapes)
    written as escapes, and cut at `limit` characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out + (f"... ({len(text)} characters)" if len(text) > limit else "")


@contextmanager
def deadline(seconds: Optional[float], what: str) -> Iterator[None]:
    """Raise ClientError once `seconds` have passed, wherever the command waits (a server sending one
    byte every few seconds never hits a per-read timeout). Main thread only (a signal); elsewhere a
    no-op, and the per-read timeout alone bounds each wait."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise ClientError(f"{what}: no complete answer within the deadline of {seconds:g} s (--deadline)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Client:
    def __init__(self, url: str, api_key: Optional[str] = None, family: Optional[str] = None, tries: int = 4,
                 timeout: float = 120.0, sleep=time.sleep):
        self.base = url.rstrip("/") + (f"/families/{family}" if family else "")
        self.family = family
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if family:  # Ray Serve routes a family's requests to a replica that holds it (service/ray_serve.py)
            headers[MULTIPLEXED_MODEL_ID] = family
        self.http = httpx.Client(headers=headers, timeout=timeout, follow_redirects=False)
        self.tries, self.sleep = max(1, tries), sleep

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        """The streamed response of a request that succeeded (2xx), after retrying 503s; else ClientError."""
        url = self.base + path
        for attempt in range(1, self.tries + 1):
            try:
                response = self.http.send(self.http.build_request(method, url, **kwargs), stream=True)
            except httpx.TransportError as e:
                raise ClientError(f"cannot reach {url}: {shown(str(e))}") from None
            if response.status_code != 503 or attempt == self.tries:
                break
            wait = retry_after(response)
            response.close()
            self.sleep(wait)
        if response.is_redirect:
            response.close()
            raise ClientError(f"{method} {url} -> {response.status_code} redirect to "
                              f"{shown(response.headers.get('location', '(no location)'))}: pmerge does not follow "
                              f"redirects; give --url the address that serves the API")
        if not response.is_success:
            try:
                body = read_capped(response, MAX_ERROR_BYTES, truncate=True)
            except httpx.HTTPError:
                body = b""
            raise ClientError(describe_error(response, body, attempt))
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
        response = self._send("POST", "/classify", params=params, files=files)
        return json_answer(response)

    def fetch(self, pref: str, out: Path) -> tuple[int, str]:
        """Stream the checkpoint of `pref` to `out`, atomically, and keep it only when it is complete
        (the bytes announced), a safetensors file, and made for this family and preference; (bytes,
        ETag). Nothing is left behind otherwise, an interruption included."""
        response = self._send("GET", f"/models/{pref}", headers={"Accept-Encoding": "identity"})
        url = str(response.url)
        tmp = out.with_name(f".{out.name}.part")
        try:
            kind = response.headers.get("content-type", "")
            if not kind.startswith(CHECKPOINT_TYPE):
                head = read_capped(response, 200, truncate=True)
                raise ClientError(f"{url}: the answer is {shown(kind) or 'of no content type'}, not a checkpoint "
                                  f"({CHECKPOINT_TYPE}): \"{shown(head, 100)}\"; nothing written to {out}")
            etag, length = response.headers.get("etag"), response.headers.get("content-length")
            if not etag or length is None or not length.isdigit():
                raise ClientError(f"{url}: the answer has no {'ETag' if not etag else 'valid Content-Length'}; "
                                  f"nothing written to {out}")
            try:
                with open(tmp, "wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            except httpx.HTTPError as e:
                raise ClientError(f"{url}: the download broke off after {response.num_bytes_downloaded} of {length} "
                                  f"bytes ({shown(str(e), 120)}); nothing written to {out}") from None
            # the bytes on the wire, as Content-Length counts them (a compressing proxy changes the rest)
            if response.num_bytes_downloaded != int(length):
                raise ClientError(f"{url}: received {response.num_bytes_downloaded} bytes, Content-Length said "
                                  f"{length}; nothing written to {out}")
            check_checkpoint(tmp, self.family, pref, url, out, response.headers)
            os.replace(tmp, out)
            return out.stat().st_size, etag
        finally:
            response.close()
            tmp.unlink(missing_ok=True)


def read_capped(response: httpx.Response, limit: int, truncate: bool = False) -> bytes:
    """The (decoded) body, at most `limit` bytes: beyond it ClientError, or with `truncate` the first
    `limit` bytes."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if truncate:
                break
            response.close()
            raise ClientError(f"{response.request.method} {response.url}: the answer is larger than "
                              f"{limit >> 20} MiB; refused")
    return b"".join(chunks)[:limit]


def json_answer(response: httpx.Response) -> dict:
    body = read_capped(response, MAX_JSON_BYTES)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        kind = response.headers.get("content-type") or "of no content type"
        raise ClientError(f"{response.request.method} {response.url} -> {response.status_code}: the answer is "
                          f"{shown(kind)} ({len(body)} bytes), not a JSON object: \"{shown(body, 120)}\"")
    return answer


def check_checkpoint(path: Path, family: Optional[str], pref: str, url: str, out: Path,
                     answer: httpx.Headers) -> None:
    """A complete safetensors file whose metadata name `family` (when the user gave one) and the
    variant the answer's headers name as serving the preference `pref` asked for (X-Pmerge-Variant,
    X-Pmerge-Preference); ClientError otherwise. Reads the header only."""
    from models_store.preference import PreferenceError, parse_preference

    def refuse(why: str) -> ClientError:
        return ClientError(f"{url}: {why}; nothing written to {out}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else None
        if n is None or n > min(MAX_HEADER_BYTES, size - 8):
            raise refuse("the answer is not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise refuse("the answer is not a safetensors file (its header is no JSON)") from None
    if not isinstance(header, dict):
        raise refuse("the answer is not a safetensors file (its header is no JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    try:
        end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise refuse("the answer is not a safetensors file (a tensor without data offsets)") from None
    if 8 + n + end != size:
        raise refuse(f"the safetensors file holds {8 + n + end} bytes of tensors and header, not {size}")
    if family and metadata.get("family_id") != family:
        raise refuse(f"the checkpoint is of family {shown(str(metadata.get('family_id')))}, not {family}")
    answered = answer.get("x-pmerge-preference", "")
    try:
        weights = parse_preference(answered, [t.partition(":")[0] for t in answered.split(",")]).as_dict()
        asked = parse_preference(pref, list(weights)).as_dict()
        same = all(math.isclose(asked[t], float(w), abs_tol=2e-6) for t, w in weights.items())
    except (ValueError, TypeError, AttributeError, PreferenceError):
        raise refuse("the answer names no preference (X-Pmerge-Preference) that fits the one asked for") from None
    if not same:
        raise refuse(f"the answer is for preference {shown(answered)}, not {pref}")
    variant = answer.get("x-pmerge-variant")
    if not variant or metadata.get("variant") != variant:
        raise refuse(f"the checkpoint is of variant {shown(str(metadata.get('variant')))}, not the "
                     f"{shown(str(variant))} the answer names (X-Pmerge-Variant)")


def retry_after(response: httpx.Response) -> float:
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def describe_error(response: httpx.Response, body: bytes, attempts: int) -> str:
    try:
        answer = json.loads(body)
        what = f"{shown(str(answer['error']), 60)}: {shown(str(answer['detail']))}"
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()
        what = shown(text.splitlines()[0], 200) if text else shown(response.reason_phrase)
    tried = f" (after {attempts} tries)" if response.status_code == 503 and attempts > 1 else ""
    return f"{response.request.method} {response.url} -> {response.status_code} {what}{tried}"


# --- commands ---------------------------------------------------------------------------------

def add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the service's base URL, e.g. http://localhost:8000")
    parser.add_argument("--family", help="a family id of GET /families (default: the service's default family)")
    parser.add_argument("--api-key", default=os.environ.get("PMERGE_API_KEY"),
                        help="sent as 'Authorization: Bearer KEY' (default: env PMERGE_API_KEY)")
    parser.add_argument("--tries", type=int, default=4, help="attempts when the service answers 503")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, metavar="SECONDS",
                        help="give up once the whole command took this long, retries included (default %(default)g)")


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection(parser)
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--pref", help="preference, 0.2,0.8 or digits:0.7,glyphs:0.3 (default: equal)")
    parser.add_argument("--task", help="the task(s) to answer, comma-separated (default: all)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the service's JSON answer")


@contextmanager
def command(name: str, args: argparse.Namespace) -> Iterator[Client]:
    """A client for the command, under its deadline; every failure one line, exit 2 (130 on Ctrl-C)."""
    try:
        with deadline(args.deadline, f"pmerge {name}"), \
                Client(args.url, args.api_key, args.family, args.tries) as client:
            yield client
    except ClientError as e:
        raise SystemExit(f"pmerge {name}: error: {e}") from None
    except KeyboardInterrupt:
        print(f"pmerge {name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def run_classify(args: argparse.Namespace) -> None:
    with command("classify", args) as client:
        answer = client.classify(args.images, args.pref, args.task, args.top_k)
    if args.json:
        print(json.dumps(answer, indent=2))  # JSON escapes every control character itself
        return
    try:
        print(f"family {shown(str(answer['family_id']))}, preference {shown(str(answer['preference']))}")
        print("| image | task | labels (probability) |")
        print("|---|---|---|")
        for result in answer["results"]:
            for task, labels in result["predictions"].items():
                labels = ", ".join(f"{shown(str(x['label']), 60)} ({float(x['probability']):.3f})" for x in labels)
                print(f"| {shown(str(result['filename'] or result['index']), 80)} | {shown(task, 60)} | {labels} |")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SystemExit("pmerge classify: error: the answer is JSON but not a classification (use --json to see "
                         "it)") from None


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection(parser)
    parser.add_argument("--pref", required=True, help="the preference whose merged checkpoint to download")
    parser.add_argument("--out", required=True, type=Path, help="the safetensors file to write (atomically)")


def run_fetch(args: argparse.Namespace) -> None:
    with command("fetch", args) as client:
        size, etag = client.fetch(args.pref, args.out)
    print(f"wrote {args.out} ({size} bytes, ETag {shown(etag, 80)})")


COMMANDS = [Command("classify", "classify images with a running service (a table, or --json)",
                    add_classify_arguments, run_classify),
            Command("fetch", "download a preference's merged checkpoint from a running service",
                    add_fetch_arguments, run_fetch)]
