"""The batching engine without HTTP: mixed-preference batches, the bounded queue."""
import threading

import pytest
import torch

from models_store.preference import from_weights
from models_store.tower import head_logits, load_tower
from service.engine.batching import Engine, EngineConfig
from service.engine.images import Decoded
from service.errors import NotReady, Overloaded, PayloadTooLarge
from models_store.kinds.lowrank import LowRankServable


def make_engine(family, **config) -> tuple[Engine, list[int]]:
    sizes: list[int] = []
    engine = Engine.from_family(family, EngineConfig(**config), on_batch=lambda n, s, c: sizes.append(n))
    engine.start()
    return engine, sizes


def pixels(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """n random 8-bit images [n, 3, size, size]."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def decoded(images: torch.Tensor) -> list[Decoded]:
    """The images as a front end hands them to the engine."""
    return [Decoded(pixels=x.numpy()) for x in images]


class GatedModel:
    """Wraps a model; forward passes block until the test opens the gate (to fill the queue)."""

    def __init__(self, model: LowRankServable):
        self.model, self.gate = model, threading.Event()
        self.entered = threading.Event()
        self.seen: list[torch.Tensor] = []

    def plan(self, variants):
        return self.model.plan(variants)

    def logits(self, images, variants, plan):
        self.seen.append(torch.tensor(variants))  # a low-rank family's variants: the weights
        self.entered.set()
        self.gate.wait(10)
        return self.model.logits(images, variants, plan)


def gated_engine(family, **config) -> tuple[Engine, GatedModel]:
    """An engine over a GatedModel, warmed up, whose next forward blocks until the test opens the gate."""
    gated = GatedModel(family.servable(torch.device("cpu"), torch.float32))
    gated.gate.set()  # warm-up passes
    engine = Engine(gated, EngineConfig(**config), tasks=len(family.tasks), preprocess=family.manifest.preprocess,
                    resolve=family.resolve)
    engine.start()
    gated.gate.clear()
    gated.entered.clear()
    gated.seen.clear()
    return engine, gated


def test_requests_with_different_preferences_share_one_batch(family):
    engine, sizes = make_engine(family, max_batch=16, max_wait_ms=200)
    try:
        sizes.clear()  # drop the warm-up
        images = pixels(5)
        prefs = [from_weights(w, family.tasks) for w in ([1, 0, 0], [0, 1, 0], [0.2, 0.3, 0.5])]
        futures = [engine.submit(decoded(images[a:b]), p.tensor()) for (a, b), p in zip(((0, 2), (2, 4), (4, 5)), prefs)]
        results = [f.result(10) for f in futures]
    finally:
        engine.stop()
    assert sizes == [5], f"expected one batch of 5 images, got {sizes}"
    groups = [(images[0:2], prefs[0]), (images[2:4], prefs[1]), (images[4:5], prefs[2])]
    for (imgs, pref), got in zip(groups, results):
        tower = load_tower(family.manifest.architecture, family.materialize(pref))
        with torch.no_grad():
            feats = tower(family.manifest.preprocess.normalize(imgs))
        for t, h in family.heads.items():
            ref = head_logits(feats, h.weight, h.bias)
            assert got[t].shape[0] == imgs.shape[0]
            assert (torch.from_numpy(got[t]) - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max())  # relative


def test_full_queue_raises_overloaded_with_retry_after(family):
    engine, gated = gated_engine(family, max_batch=2, max_wait_ms=0, queue_size=4)
    pref = torch.full((3,), 1 / 3)
    try:
        first = engine.submit(decoded(pixels(2)), pref)  # taken by the worker, which then blocks
        assert gated.entered.wait(5)
        queued = engine.submit(decoded(pixels(4)), pref)  # fills the queue (4 images)
        with pytest.raises(Overloaded, match="queue full") as info:
            engine.submit(decoded(pixels(1)), pref)
        assert info.value.status == 503 and int(info.value.headers["Retry-After"]) >= 1
        with pytest.raises(PayloadTooLarge, match="at most 4"):
            engine.submit(decoded(pixels(5)), pref)
        gated.gate.set()
        assert first.result(10)["digits"].shape == (2, 5)
        assert queued.result(10)["letters"].shape == (4, 4)
        # the queue drained: the engine accepts work again
        assert engine.submit(decoded(pixels(1)), pref).result(10)["fashion"].shape == (1, 3)
    finally:
        gated.gate.set()
        engine.stop()
    with pytest.raises(NotReady):
        engine.submit(decoded(pixels(1)), pref)


def test_background_work_waits_for_the_foreground(family):
    """POST /select's batches are background work: queued behind them, a /classify's images are in
    the very next batch, and background fills only the room they leave."""
    engine, gated = gated_engine(family, max_batch=4, max_wait_ms=0)
    background, foreground = torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0])
    try:
        first = engine.submit(decoded(pixels(4)), background, background=True)  # running, then blocked
        assert gated.entered.wait(5)
        later = [engine.submit(decoded(pixels(4)), background, background=True) for _ in range(3)]
        classify = engine.submit(decoded(pixels(2)), foreground)
        gated.gate.set()
        assert classify.result(10)["digits"].shape == (2, 5)
        assert all(f.result(10)["digits"].shape == (4, 5) for f in [first, *later])
    finally:
        gated.gate.set()
        engine.stop()
    second = gated.seen[1]  # the batch after the running one: the foreground first, background after it
    assert second.shape[0] == 4 and torch.equal(second[:2], foreground.expand(2, 3))
    assert torch.equal(second[2:], background.expand(2, 3))


def test_a_failing_batch_fails_its_requests_and_the_engine_keeps_serving(family):
    engine, _ = make_engine(family, max_batch=4, max_wait_ms=0)
    try:
        bad = engine.submit(decoded(pixels(1, size=8)), torch.full((3,), 1 / 3))  # wrong image size
        with pytest.raises(Exception):
            bad.result(10)
        good = engine.submit(decoded(pixels(1)), torch.full((3,), 1 / 3))
        assert good.result(10)["digits"].shape == (1, 5)
    finally:
        engine.stop()


def test_warm_up_runs_a_full_batch_of_mixed_preferences(family):
    """K comes from the family, and the warm-up batch mixes preferences as real traffic does."""
    base = family.servable(torch.device("cpu"), torch.float32)
    recorder = GatedModel(base)
    recorder.gate.set()
    engine = Engine(recorder, EngineConfig(max_batch=4, max_wait_ms=0), tasks=len(family.tasks),
                    preprocess=family.manifest.preprocess, resolve=family.resolve)
    engine.start()
    engine.stop()
    full = [p for p in recorder.seen if p.shape[0] == 4]
    assert full and full[0].shape[1] == len(family.tasks)
    assert torch.unique(full[0], dim=0).shape[0] == len(family.tasks)
    assert torch.allclose(full[0].sum(1), torch.ones(4))
