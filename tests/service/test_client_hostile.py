"""`pmerge fetch` and `pmerge classify` against servers that misbehave (a raw socket server plays
each): redirects, HTML, bytes that are no checkpoint or the wrong one, a body cut short, a server
that drips a byte at a time, escapes and newlines in what it says, answers too large, a compressing
proxy, and Ctrl-C. Each ends in one escaped line and a non-zero exit, with nothing left behind; the
good ones write exactly the checkpoint."""
from __future__ import annotations

import gzip
import json
import signal
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from models_store.cli import main
from service import client as client_module

Handler = Callable[[socket.socket], None]


@contextmanager
def raw_server(handler: Handler) -> Iterator[str]:
    """A server that reads one request per connection and lets `handler` write whatever it likes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        break
                    request += data
                head, _, body = request.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                try:
                    handler(conn)
                except OSError:
                    pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def answer(status: str, headers: dict[str, str], body: bytes, length: int | None = None) -> Handler:
    def handle(conn: socket.socket) -> None:
        lines = [f"HTTP/1.1 {status}", f"content-length: {len(body) if length is None else length}",
                 "connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return handle


def checkpoint(family: str = "fam", variant: str = "[0.7,0.3]") -> bytes:
    metadata = {"family_id": family, "variant": variant, "preference": json.dumps({"a": 0.7, "b": 0.3}),
                "architecture": "{}"}
    return safetensors_bytes({"visual.w": torch.arange(6.0), "heads.a.weight": torch.ones(2, 3)}, metadata)


OCTETS = {"content-type": "application/octet-stream", "etag": '"abc"', "x-pmerge-preference": "a:0.7,b:0.3",
          "x-pmerge-variant": "[0.7,0.3]"}


def fetch(url: str, tmp_path, *extra: str) -> str:
    """`pmerge fetch`'s failure line; asserts it is one line and that nothing was left behind."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fetch", "--url", url, "--pref", "a:0.7,b:0.3", "--out", str(tmp_path / "m.safetensors"), *extra])
    message = str(exit_info.value.code)
    assert "\n" not in message and "\x1b" not in message, message
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())  # no file, no .part
    return message


CUT = checkpoint()[:-40]


@pytest.mark.parametrize("status,headers,body,length,expected", [
    ("302 Found", {"location": "http://elsewhere.example/x"}, b"<html>moved</html>", None,
     "-> 302 redirect to http://elsewhere.example/x: pmerge does not follow redirects"),
    ("200 OK", {"content-type": "text/html", "etag": '"x"'}, b"<html>login page</html>", None,
     "the answer is text/html, not a checkpoint"),
    ("200 OK", OCTETS, b"\x00" * 64, None, "the answer is not a safetensors file"),
    ("200 OK", OCTETS, checkpoint(family="other"), None, "the checkpoint is of family other, not fam"),
    ("200 OK", OCTETS | {"x-pmerge-preference": "a:0.5,b:0.5"}, checkpoint(), None,
     "the answer is for preference a:0.5,b:0.5, not a:0.7,b:0.3"),
    ("200 OK", OCTETS, checkpoint(variant="[0.5,0.5]"), None,
     "the checkpoint is of variant [0.5,0.5], not the [0.7,0.3] the answer names"),
    ("200 OK", OCTETS, CUT, len(CUT) + 40, f"the download broke off after {len(CUT)} of {len(CUT) + 40} bytes"),
], ids=["redirect", "html", "not-safetensors", "other-family", "other-preference", "other-variant", "cut-short"])
def test_fetch_keeps_only_the_checkpoint_asked_for(tmp_path, status, headers, body, length, expected):
    with raw_server(answer(status, headers, body, length)) as url:
        message = fetch(url, tmp_path, "--family", "fam")
    assert message.startswith("pmerge fetch: error: ") and expected in message, message


def test_fetch_writes_a_good_checkpoint_also_through_a_compressing_proxy(tmp_path, capsys):
    good = checkpoint()
    for headers, body in ((OCTETS, good), (OCTETS | {"content-encoding": "gzip"}, gzip.compress(good))):
        out = tmp_path / "m.safetensors"
        with raw_server(answer("200 OK", headers, body)) as url:
            main(["fetch", "--url", url, "--family", "fam", "--pref", "0.7,0.3", "--out", str(out)])
        assert out.read_bytes() == good and "wrote" in capsys.readouterr().out
        out.unlink()


def dripping(body: bytes, every: float = 0.3) -> Handler:
    """Headers and body one byte at a time: never idle long enough for a per-read timeout."""
    def handle(conn):
        data = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        for byte in data + body:
            conn.sendall(bytes([byte]))
            time.sleep(every)
    return handle


@pytest.mark.parametrize("command", ["fetch", "classify"])
def test_a_dripping_server_meets_the_overall_deadline(tmp_path, command):
    image = tmp_path / "i.png"
    image.write_bytes(b"png")
    with raw_server(dripping(b'{"a": 1}' * 100)) as url:
        started = time.monotonic()
        with pytest.raises(SystemExit) as exit_info:
            if command == "fetch":
                main(["fetch", "--url", url, "--pref", "1", "--out", str(tmp_path / "m"), "--deadline", "1.5"])
            else:
                main(["classify", "--url", url, str(image), "--deadline", "1.5"])
        took = time.monotonic() - started
    assert 1.4 < took < 4, took
    assert f"pmerge {command}: error: pmerge {command}: no complete answer within the deadline of 1.5 s" \
        in str(exit_info.value.code)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.png"]


def test_what_a_server_says_is_escaped_and_non_json_is_named(tmp_path):
    image = tmp_path / "i.png"
    image.write_bytes(b"png")
    detail = "no such family\n\x1b[31mFAKE: all is well\x1b[0m"
    body = json.dumps({"error": "unknown_family", "detail": detail}).encode()
    with raw_server(answer("404 Not Found", {"content-type": "application/json"}, body)) as url:
        with pytest.raises(SystemExit) as exit_info:
            main(["classify", "--url", url, str(image)])
    message = str(exit_info.value.code)
    assert "\x1b" not in message and "\n" not in message and r"\x1b[31mFAKE" in message and r"\n" in message
    with raw_server(answer("200 OK", {"content-type": "text/html"}, b"<html>\n<b>proxy error</b>")) as url:
        with pytest.raises(SystemExit) as exit_info:
            main(["classify", "--url", url, str(image)])
    message = str(exit_info.value.code)
    assert 'the answer is text/html (25 bytes), not a JSON object: "<html>\\n<b>proxy error</b>"' in message, message
    assert "Expecting value" not in message


def test_an_answer_over_the_cap_is_refused_before_it_is_all_read(tmp_path, monkeypatch):
    image = tmp_path / "i.png"
    image.write_bytes(b"png")
    monkeypatch.setattr(client_module, "MAX_JSON_BYTES", 1 << 20)
    huge = b'{"results": [' + b"0," * (3 << 20) + b"0]}"
    with raw_server(answer("200 OK", {"content-type": "application/json"}, huge)) as url:
        with pytest.raises(SystemExit) as exit_info:
            main(["classify", "--url", url, str(image)])
    assert "the answer is larger than 1 MiB; refused" in str(exit_info.value.code)


def test_ctrl_c_during_a_download_leaves_nothing(tmp_path):
    good = checkpoint()

    def slow(conn):
        conn.sendall(("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\netag: \"a\"\r\n"
                      f"content-length: {len(good)}\r\n\r\n").encode() + good[:100])
        time.sleep(3)
    # what a terminal's CLI has, whatever earlier tests in this process left: Python's handler, SIGINT unblocked
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    with raw_server(slow) as url:
        # to the main thread, as a terminal's Ctrl-C reaches a one-thread CLI: a signal sent to the process
        # may be taken by any thread (this one has many: earlier tests' pools), leaving the read unbroken
        timer = threading.Timer(0.5, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
        timer.start()
        with pytest.raises(SystemExit) as exit_info:
            main(["fetch", "--url", url, "--pref", "0.7,0.3", "--out", str(tmp_path / "m.safetensors")])
        timer.join()
    signal.signal(signal.SIGINT, previous)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert exit_info.value.code == 130 and list(tmp_path.iterdir()) == [], (previous, blocked)
