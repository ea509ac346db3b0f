"""The batching engine: one worker thread owns the model; requests with any preferences share batches.

`submit(pixels, prefs)` is cheap and thread-safe (the event loop calls it); it splits a request
into per-image items on a bounded queue and returns a `concurrent.futures.Future` of the
request's logits. The worker takes up to `max_batch` images, waiting at most `max_wait_ms`
after the oldest one arrived, and runs ONE forward pass where every image carries its own
preference row. When the queue holds `queue_size` images, `submit` raises `Overloaded`;
`admission(n)` holds n places first, so a server can refuse a request before decoding its images.

Images arrive as decoded 8-bit pixels [C, S, S] (what the front end made of the upload); the
worker moves a batch's pixels to the device in one copy and normalises them there (`forward`),
so the host never handles float images.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from models_store.family import Family
from models_store.kinds.base import BUCKETS, Servable
from models_store.preprocess import Preprocess

from .errors import NotReady, Overloaded, PayloadTooLarge

log = logging.getLogger(__name__)

Logits = dict[str, torch.Tensor]  # task -> [N, C_task], float32 on CPU


@dataclass
class EngineConfig:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    max_batch: int = 64
    max_wait_ms: float = 5.0
    queue_size: int = 1024
    device_cache_bytes: int = 1 << 30  # what the servable may keep materialised on the device
    graphs: bool = False  # CUDA graphs (CUDA only)


class _Request:
    """One submitted request; only the worker thread fills it."""

    def __init__(self, n: int):
        self.future: Future[Logits] = Future()
        self.rows: list[Optional[Logits]] = [None] * n
        self.remaining = n

    def done_row(self, index: int, row: Logits) -> None:
        self.rows[index] = row
        self.remaining -= 1
        if self.remaining == 0:
            result = {t: torch.stack([r[t] for r in self.rows]) for t in self.rows[0]}
            _resolve(self.future, result=result)

    def fail(self, error: BaseException) -> None:
        _resolve(self.future, error=error)


def _resolve(future: Future, result=None, error: Optional[BaseException] = None) -> None:
    try:  # the caller may have cancelled (client went away): nothing to deliver then
        future.set_exception(error) if error is not None else future.set_result(result)
    except InvalidStateError:
        pass


@dataclass
class _Item:
    pixels: torch.Tensor  # [C, S, S] uint8
    pref: torch.Tensor  # [K] float32
    request: _Request
    index: int
    enqueued: float


@dataclass
class Ticket:
    """Places held in an engine's queue by `Engine.admission`."""
    engine: "Engine"
    places: int
    submitted: bool = False

    def submit(self, pixels: torch.Tensor, prefs: torch.Tensor) -> Future[Logits]:
        return self.engine._enqueue(self, pixels, prefs)


class Engine:
    def __init__(self, model: Servable, config: EngineConfig, *, tasks: int, preprocess: Preprocess,
                 on_batch: Optional[Callable[[int, float], None]] = None,
                 on_queue_wait: Optional[Callable[[float], None]] = None):
        """`model.logits(images [N, C, S, S], prefs [N, tasks])` serves a batch of images that
        `preprocess` normalises; `on_batch(images, seconds)` after every forward pass;
        `on_queue_wait(seconds)` per image."""
        self.model = model
        self.tasks = tasks
        self.preprocess = preprocess
        self.config = config
        self.on_batch = on_batch or (lambda n, s: None)
        self.on_queue_wait = on_queue_wait or (lambda s: None)
        self._queue: deque[_Item] = deque()
        self._held = 0  # queue places admitted but not yet submitted
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._stopping = False
        self._start_error: Optional[BaseException] = None
        self._batch_seconds = 0.01  # moving average, for Retry-After
        self._staging: Optional[torch.Tensor] = None  # pinned pixels of a batch (CUDA)
        self.batches = 0

    @classmethod
    def from_family(cls, family: Family, config: EngineConfig, **hooks) -> "Engine":
        graphs = config.graphs and config.device.type == "cuda"
        return cls(family.servable(config.device, config.dtype, config.device_cache_bytes, graphs), config,
                   tasks=len(family.tasks), preprocess=family.manifest.preprocess, **hooks)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, warm_up: bool = True, timeout: float = 600) -> None:
        """Start the worker, which warms up first (unless told not to); blocks until ready."""
        self._thread = threading.Thread(target=self._run, args=(warm_up,), name="pmerge-engine", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("engine warm-up timed out")
        if self._start_error is not None:
            raise RuntimeError(f"engine warm-up failed: {self._start_error}") from self._start_error

    def stop(self, timeout: float = 30) -> None:
        """Finish the queued work, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._start_error is None and not self._stopping

    @property
    def queued(self) -> int:
        return len(self._queue)

    # --- the event loop's side ------------------------------------------------------------

    def submit(self, pixels: torch.Tensor, prefs: torch.Tensor) -> Future[Logits]:
        """Queue N images [N, C, S, S] (uint8) with their preferences [N, K], or one [K] for all;
        raises Overloaded when full."""
        with self.admission(pixels.shape[0]) as ticket:
            return ticket.submit(pixels, prefs)

    @contextmanager
    def admission(self, n: int) -> Iterator["Ticket"]:
        """Hold n places in the queue (while the caller decodes its images, say); Overloaded when
        they are not free. The places return when the block ends, or turn into queued images when
        the ticket submits."""
        if n > self.config.queue_size:
            raise PayloadTooLarge(f"{n} images in one request; this server queues at most {self.config.queue_size}")
        with self._cond:
            if not self.ready:
                raise NotReady("the model is not loaded yet (or shutting down)")
            if len(self._queue) + self._held + n > self.config.queue_size:
                raise Overloaded(f"queue full ({len(self._queue)} images waiting, {self._held} being decoded); "
                                 f"retry later", retry_after=self._retry_after())
            self._held += n
        ticket = Ticket(self, n)
        try:
            yield ticket
        finally:
            if not ticket.submitted:
                with self._cond:
                    self._held -= n

    def require_room(self, n: int) -> None:
        """Overloaded (or PayloadTooLarge) now, before a body is read, when the queue cannot take n more."""
        with self.admission(n):
            pass

    def _enqueue(self, ticket: "Ticket", pixels: torch.Tensor, prefs: torch.Tensor) -> Future[Logits]:
        n = pixels.shape[0]
        if ticket.submitted or n != ticket.places:
            raise ValueError(f"a ticket for {ticket.places} images submits them once, got {n}")
        if pixels.dtype != torch.uint8:
            raise TypeError(f"the engine takes 8-bit pixels, got {pixels.dtype}")
        prefs = prefs.float().expand(n, self.tasks) if prefs.dim() == 1 else prefs.float()
        request = _Request(n)
        with self._cond:
            if not self.ready:
                raise NotReady("the model is not loaded yet (or shutting down)")
            now = time.monotonic()
            self._queue.extend(_Item(pixels[i], prefs[i], request, i, now) for i in range(n))
            self._held -= n
            ticket.submitted = True
            self._cond.notify()
        return request.future

    def _retry_after(self) -> int:
        batches_ahead = len(self._queue) / self.config.max_batch + 1
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    # --- the worker ---------------------------------------------------------------------------

    def _run(self, warm_up: bool) -> None:
        try:
            if warm_up:
                self._warm_up()
        except BaseException as e:  # reported by start()
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        while (items := self._next_batch()) is not None:
            try:
                self._process(items)
            except Exception:  # a bug in a hook must not kill the only worker
                log.exception("engine worker: unexpected error")

    def _warm_up(self) -> None:
        # a single image and a full batch whose images have different preferences (the vertices in
        # turn, as clients send them): allocator and kernels are ready for the first client
        pre = self.preprocess
        sizes = {1, self.config.max_batch}
        if self.config.graphs and self.config.device.type == "cuda":  # capture every graph a batch can take
            sizes |= {b for b in BUCKETS if b < self.config.max_batch}
        for n in sorted(sizes):
            prefs = torch.eye(self.tasks)[torch.arange(n) % self.tasks] if n > 1 else \
                torch.full((1, self.tasks), 1.0 / self.tasks)
            self.forward(torch.zeros(n, pre.channels, pre.image_size, pre.image_size, dtype=torch.uint8), prefs)

    def forward(self, pixels: torch.Tensor, prefs: torch.Tensor, plan=...) -> Logits:
        """The device path of one batch: pixels [N, C, S, S] uint8 and prefs [N, K] on the host ->
        logits on the host. One copy to the device, normalised there; one copy of all tasks' logits back."""
        if plan is ...:
            plan = self.model.plan(prefs)
        images = self.preprocess.normalize(pixels.to(self.config.device, non_blocking=True))
        logits = self.model.logits(images, prefs, plan)
        sizes = [v.shape[1] for v in logits.values()]
        host = torch.cat(list(logits.values()), dim=1).cpu()
        return dict(zip(logits, host.split(sizes, dim=1)))

    def _staged(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """The batch's pixels in one host tensor; on CUDA in a pinned buffer kept for every batch, so
        the copy to the device runs without a staging copy of its own. (The buffer is free again when
        the batch's logits are back: the forward waits for them.)"""
        if self.config.device.type != "cuda":
            return torch.stack(pixels)
        shape = (self.config.max_batch, *pixels[0].shape)
        if self._staging is None or self._staging.shape != shape:
            self._staging = torch.empty(shape, dtype=torch.uint8).pin_memory()
        return torch.stack(pixels, out=self._staging[:len(pixels)])

    def _next_batch(self) -> Optional[list[_Item]]:
        max_batch, max_wait = self.config.max_batch, self.config.max_wait_ms / 1000
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            # the window opens when the oldest image arrived: a busy worker does not wait again
            deadline = self._queue[0].enqueued + max_wait
            while len(self._queue) < max_batch and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            items = [self._queue.popleft() for _ in range(min(max_batch, len(self._queue)))]
        return [it for it in items if not it.request.future.cancelled()]

    def _process(self, items: list[_Item]) -> None:
        if not items:
            return
        start = time.monotonic()
        for it in items:
            self.on_queue_wait(start - it.enqueued)
        try:
            logits = self.forward(self._staged([it.pixels for it in items]), torch.stack([it.pref for it in items]))
        except Exception as e:  # fail this batch's requests; the engine keeps serving
            log.exception("forward pass failed for a batch of %d images", len(items))
            for request in {id(it.request): it.request for it in items}.values():
                request.fail(e)
            return
        for i, it in enumerate(items):
            it.request.done_row(it.index, {t: v[i] for t, v in logits.items()})
        seconds = time.monotonic() - start
        self._batch_seconds = 0.9 * self._batch_seconds + 0.1 * seconds
        self.batches += 1
        self.on_batch(len(items), seconds)
