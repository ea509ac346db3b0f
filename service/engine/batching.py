"""The batching engine: one worker thread owns the model; requests with any preferences share batches.

`submit(images, prefs)` is cheap and thread-safe (the event loop calls it); it resolves the
preferences to the family's variants there (models_store/kinds/base.py: memoised; a caller
resolves a family's `slow_resolution` preferences in a thread first, see `Engine.resolve`), splits
the request into per-image items (image, variant) on a bounded queue and returns a
`concurrent.futures.Future` of the request's logits. The worker takes up to `max_batch` images,
waiting at most `max_wait_ms` after the oldest one arrived, and runs ONE forward pass where every
image carries its own variant: it never rounds, picks or solves. When the queue holds `queue_size` images, `submit` raises `Overloaded`;
`admission(n)` holds n places first, so a server can refuse a request before decoding its images.
Background work (POST /select's candidates) waits in a queue of its own: a batch takes it only
where the foreground's images leave room, so a /select never makes a /classify wait behind it
for more than the one batch that is running.

Images arrive as a front end made them (service/engine/images.py, `Decoded`): 8-bit pixels [C, S, S],
or JPEG files that the worker decodes on the device, the batch's together. The worker moves the
batch's pixels to the device in one copy from pinned memory, and normalises them there
(`forward`): the host never handles float images. Logits come back as numpy arrays, one copy.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, cast

import numpy as np
import torch

from models_store.family import Family
from models_store.kinds.base import BUCKETS, Servable, Variant
from models_store.preprocess import Preprocess

from service.errors import NotReady, Overloaded, PayloadTooLarge, ServiceError, UnsupportedImage
from service.engine.images import Decoded, decode_image

log = logging.getLogger(__name__)

Logits = dict[str, np.ndarray]  # task -> [N, C_task], float32, on the host


@dataclass
class EngineConfig:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    max_batch: int = 64
    max_wait_ms: float = 5.0
    queue_size: int = 1024
    device_cache_bytes: Optional[int] = None  # what the servable may keep materialised on the device (None: the
    # family's default, Family.device_cache_bytes)
    graphs: bool = False  # CUDA graphs (CUDA only)
    device_jpeg: bool = False  # JPEG files are decoded on the device (the front ends send them whole)


class _Request:
    """One submitted request; only the worker thread fills it. Its future is an asyncio one when it
    was submitted from an event loop (`loop`), which the worker settles with the batch's others in
    one call into that loop (one wake-up per batch, not per request); else a concurrent one."""

    def __init__(self, n: int, loop: Optional[asyncio.AbstractEventLoop] = None):
        self.loop = loop
        self.future: asyncio.Future[Any] | Future[Any] = loop.create_future() if loop is not None else Future()
        self.rows: list[Optional[Logits]] = [None] * n
        self.remaining = n
        self.failed = False
        self.outcome: Optional[tuple] = None  # (result, error), once settled by the worker

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()

    def done_row(self, index: int, row: Logits) -> None:
        if self.failed:
            return
        self.rows[index] = row
        self.remaining -= 1
        if self.remaining == 0:
            rows = cast("list[Logits]", self.rows)  # every row is filled now
            self._settle({t: np.stack([r[t] for r in rows]) for t in rows[0]}, None)

    def fail(self, error: BaseException) -> None:
        if not self.failed:
            self.failed = True
            self._settle(None, error)

    def _settle(self, result, error) -> None:
        if self.loop is None:
            _resolve(self.future, result, error)
        else:
            self.outcome = (result, error)


def _resolve(future, result=None, error: Optional[BaseException] = None) -> None:
    if future.done():  # the caller cancelled (client went away): nothing to deliver then
        return
    try:
        future.set_exception(error) if error is not None else future.set_result(result)
    except InvalidStateError:
        pass


def _deliver(requests: list[_Request]) -> None:
    """In the requests' event loop: settle their futures."""
    for request in requests:
        if request.outcome is not None:  # always, as deliver_settled picks them
            _resolve(request.future, *request.outcome)


def deliver_settled(requests) -> None:
    """Hand every settled asyncio request to its loop, one call per loop."""
    by_loop: dict = {}
    for request in requests:
        if request.loop is not None and request.outcome is not None and not getattr(request, "delivered", False):
            request.delivered = True
            by_loop.setdefault(request.loop, []).append(request)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, settled)
        except RuntimeError:  # the loop closed: nobody waits any more
            pass


@dataclass
class _Item:
    image: Decoded
    variant: Variant
    request: _Request
    index: int
    enqueued: float


@dataclass
class Ticket:
    """Places held in an engine's queue by `Engine.admission`."""
    engine: "Engine"
    places: int
    submitted: bool = False

    def submit(self, images: Sequence[Decoded], prefs, loop: Optional[asyncio.AbstractEventLoop] = None,
               background: bool = False):
        return self.engine._enqueue(self, images, prefs, loop, background)


Resolve = Callable[[Any], list[Variant]]  # preference rows [N, K] -> their variants


class Engine:
    def __init__(self, model: Servable, config: EngineConfig, *, tasks: int, preprocess: Preprocess,
                 resolve: Resolve, on_batch: Optional[Callable[[int, float, float], None]] = None,
                 on_queue_wait: Optional[Callable[[float], None]] = None):
        """`model.logits(images [N, C, S, S], variants)` serves a batch of images that `preprocess`
        normalises, `resolve` gives the variants of preference rows [N, tasks] (the family's);
        `on_batch(images, seconds, cpu_seconds)` after every forward pass; `on_queue_wait(seconds)` per image."""
        self.model = model
        self.resolve = resolve
        self.tasks = tasks
        self.preprocess = preprocess
        self.config = config
        self.on_batch = on_batch or (lambda n, s, c: None)
        self.on_queue_wait = on_queue_wait or (lambda s: None)
        self._queue: deque[_Item] = deque()
        self._background: deque[_Item] = deque()  # taken only where the foreground leaves room
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
                   tasks=len(family.tasks), preprocess=family.manifest.preprocess, resolve=family.resolve, **hooks)

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
        return len(self._queue) + len(self._background)

    # --- the event loop's side ------------------------------------------------------------

    def submit(self, images: Sequence[Decoded], prefs, loop: Optional[asyncio.AbstractEventLoop] = None,
               background: bool = False):
        """Queue N images with their preferences [N, K], or one [K] for all; raises Overloaded when full.
        The future of their logits is `loop`'s (to await there) when given, else a concurrent one.
        `background`: served only where foreground work leaves room in a batch."""
        with self.admission(len(images)) as ticket:
            return ticket.submit(images, prefs, loop, background)

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
            if self.queued + self._held + n > self.config.queue_size:
                raise Overloaded(f"queue full ({self.queued} images waiting, {self._held} being decoded); "
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

    def _enqueue(self, ticket: "Ticket", images: Sequence[Decoded], prefs, loop=None, background: bool = False):
        n = len(images)
        if ticket.submitted or n != ticket.places:
            raise ValueError(f"a ticket for {ticket.places} images submits them once, got {n}")
        variants = self.variants(prefs, n)
        request = _Request(n, loop)
        with self._cond:
            if not self.ready:
                raise NotReady("the model is not loaded yet (or shutting down)")
            now = time.monotonic()
            (self._background if background else self._queue).extend(
                _Item(images[i], variants[i], request, i, now) for i in range(n))
            self._held -= n
            ticket.submitted = True
            self._cond.notify()
        return request.future

    def variants(self, prefs, n: int) -> list[Variant]:
        """The variants of n images' preferences: rows [N, K], or one [K] for all (resolved once)."""
        rows = np.asarray(prefs, dtype=np.float64)
        if rows.shape[-1:] != (self.tasks,) or rows.ndim not in (1, 2) or (rows.ndim == 2 and len(rows) != n):
            raise ValueError(f"preferences of shape {list(rows.shape)} for {n} images of {self.tasks} tasks")
        return self.resolve(rows[None]) * n if rows.ndim == 1 else self.resolve(rows)

    def _retry_after(self) -> int:
        batches_ahead = self.queued / self.config.max_batch + 1
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
            self.forward(torch.zeros(n, pre.channels, pre.image_size, pre.image_size, dtype=torch.uint8),
                         self.resolve(prefs))

    def forward(self, pixels: torch.Tensor, variants: Sequence[Variant], plan=...) -> dict[str, torch.Tensor]:
        """The device path of one batch: pixels [N, C, S, S] uint8 (on the host or the device) and
        each image's variant -> logits on the host. Normalised on the device; one copy of all tasks'
        logits back."""
        if plan is ...:
            plan = self.model.plan(variants)
        images = self.preprocess.normalize(pixels.to(self.config.device, non_blocking=True))
        logits = self.model.logits(images, variants, plan)
        sizes = [v.shape[1] for v in logits.values()]
        host = torch.cat(list(logits.values()), dim=1).cpu()
        return dict(zip(logits, host.split(sizes, dim=1)))

    def _staged(self, pixels: list[np.ndarray]) -> torch.Tensor:
        """Host pixels of a batch in one host tensor; on CUDA in a pinned buffer kept for every batch,
        so the copy to the device runs without a staging copy of its own. (The buffer is free again
        when the batch's logits are back: the forward waits for them.)"""
        tensors = [torch.from_numpy(p) for p in pixels]
        if self.config.device.type != "cuda":
            return torch.stack(tensors)
        shape = (self.config.max_batch, *tensors[0].shape)
        if self._staging is None or self._staging.shape != shape:
            self._staging = torch.empty(shape, dtype=torch.uint8).pin_memory()
        return torch.stack(tensors, out=self._staging[:len(tensors)])

    def _decode_jpegs(self, items: list[_Item]) -> list[torch.Tensor | ServiceError]:
        """The batch's JPEG files, decoded on the device together; a file the device refuses is
        decoded alone, then on the host (Pillow, every hardening guarantee); one neither can decode
        is an error for its request."""
        jpegs = [it.image.jpeg or b"" for it in items]  # every item here has its file
        files = [torch.from_numpy(np.frombuffer(jpeg, dtype=np.uint8).copy()) for jpeg in jpegs]
        device = self.config.device
        try:
            together: list[torch.Tensor | ServiceError] = list(self.preprocess.decode_jpegs(files, device))
            return together
        except Exception:  # noqa: BLE001  (one bad file fails the batch call: find it)
            pass
        out: list[torch.Tensor | ServiceError] = []
        for it, jpeg, file in zip(items, jpegs, files):
            try:
                out.append(self.preprocess.decode_jpegs([file], device)[0])
            except Exception:  # noqa: BLE001
                try:
                    pixels = decode_image(bytes(jpeg), self.preprocess, 1 << 62, it.image.name)
                    out.append(torch.from_numpy(pixels).to(device))
                except ServiceError as e:
                    out.append(e)
                except Exception as e:  # noqa: BLE001
                    out.append(UnsupportedImage(f"{it.image.name}: not a decodable JPEG: {e}"))
        return out

    def _gather(self, items: list[_Item]) -> tuple[torch.Tensor, list[_Item]]:
        """The batch's pixels [N, C, S, S] uint8 and its items, without those of requests an image
        of which could not be decoded (they are failed)."""
        jpegs = [it for it in items if it.image.jpeg is not None]
        decoded = {}
        if jpegs:
            for it, out in zip(jpegs, self._decode_jpegs(jpegs)):
                if isinstance(out, ServiceError):
                    it.request.fail(out)
                else:
                    decoded[id(it)] = out
        items = [it for it in items if not it.request.failed]
        host = [(i, it.image.pixels) for i, it in enumerate(items) if it.image.pixels is not None]
        if not decoded:
            return (self._staged([p for _, p in host]) if host else torch.empty(0)), items
        pre = self.preprocess
        batch = torch.empty((len(items), pre.channels, pre.image_size, pre.image_size), dtype=torch.uint8,
                            device=self.config.device)
        if host:
            at = torch.tensor([i for i, _ in host], device=batch.device)
            batch[at] = self._staged([p for _, p in host]).to(batch.device, non_blocking=True)
        rows = [i for i, it in enumerate(items) if id(it) in decoded]
        if rows:
            batch[torch.tensor(rows, device=batch.device)] = torch.stack([decoded[id(items[i])] for i in rows])
        return batch, items

    def _next_batch(self) -> Optional[list[_Item]]:
        max_batch, max_wait = self.config.max_batch, self.config.max_wait_ms / 1000
        with self._cond:
            while not self._queue and not self._background:
                if self._stopping:
                    return None
                self._cond.wait()
            # the window opens when the oldest image arrived: a busy worker does not wait again; images
            # admitted and being decoded right now (`_held`) may extend it once more, to join this batch
            deadline = (self._queue or self._background)[0].enqueued + max_wait
            extended = False
            while self.queued < max_batch and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if extended or not self._held:
                        break
                    deadline, extended = time.monotonic() + max_wait, True
                    continue
                self._cond.wait(remaining)
            items = [self._queue.popleft() for _ in range(min(max_batch, len(self._queue)))]
            items += [self._background.popleft() for _ in range(min(max_batch - len(items), len(self._background)))]
        return [it for it in items if not it.request.cancelled]

    def _process(self, items: list[_Item]) -> None:
        try:
            self._run_batch(items)
        finally:
            deliver_settled({id(it.request): it.request for it in items}.values())

    def _run_batch(self, items: list[_Item]) -> None:
        if not items:
            return
        start, cpu = time.monotonic(), time.thread_time()
        for it in items:
            self.on_queue_wait(start - it.enqueued)
        try:
            pixels, items = self._gather(items)
            if not items:
                return
            logits = {t: v.numpy() for t, v in self.forward(pixels, [it.variant for it in items]).items()}
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
        self.on_batch(len(items), seconds, time.thread_time() - cpu)
