"""Every device path of pmerge on a fake CUDA device in bf16 where it serves (tests/device/conftest.py
says what the fake device is, and where each path stops): the engine's batch path, each kind's
servable with mixed preferences, downloads merged on the device, a Pareto Merging (and PM++) step,
AdaMerging (and + preference), MAP's evaluator, ReACT, HM3's paths, front and select. The last test
shows the tier catching a host tensor planted in a device forward."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

from models_store.kinds.lowrank import LowRankServable
from models_store.preference import from_weights
from models_store.store import open_family
from service.engine.batching import Engine, EngineConfig

from conftest import on_device, on_host

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from quick_zoo import make_quick_zoo  # noqa: E402
from kind_makers import MAKERS, check_every_kind_has_a_maker, vertex_kind_registered  # noqa: E402
from svc_helpers import held_bytes, make_family, make_feature_map_family  # noqa: E402

BF16 = torch.bfloat16
PREFS = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.3, 0.3, 0.4], [0.5, 0.5, 0], [0.9, 0.1, 0]])


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """A family of every kind of the registry and of the test-only kind (tests/service/kind_makers.py;
    micro tower, 3 tasks), loaded on the host."""
    store = tmp_path_factory.mktemp("families")
    with vertex_kind_registered():
        check_every_kind_has_a_maker()
        yield {name: open_family(store, make(store).name) for name, make in MAKERS.items()}


def test_the_tier_covers_every_kind():
    with vertex_kind_registered():
        check_every_kind_has_a_maker()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_quick_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def pool(zoo):
    """The zoo's tensors, read on the host (no file I/O on the fake device)."""
    from trainer.pool import ModelPool
    pool = ModelPool(zoo)
    pool.pretrained, pool.task_vectors, pool.heads  # noqa: B018  (cached: read now)
    return pool


@pytest.fixture(scope="module")
def data(zoo):
    from trainer.taskpool import TaskPool
    return TaskPool(zoo, test_limit=12).test


def pixels(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


# --- the service ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(MAKERS))
def test_the_engine_batch_goes_to_the_device_and_back(cuda, families, kind):
    family = families[kind]
    engine = Engine.from_family(family, EngineConfig(device=cuda.device, dtype=BF16, max_batch=8,
                                                     device_cache_bytes=2 * family.tower_bytes(BF16)))
    with on_host():
        variants = family.resolve(PREFS)  # host work: which member, which distinct preference
        plan = engine.model.plan(variants)
    logits = engine.forward(cuda.host(pixels(len(PREFS))), variants, plan)
    for task, info in zip(family.tasks, family.manifest.tasks):
        assert logits[task].device.type == "cpu" and logits[task].dtype == torch.float32  # back on the host
        assert logits[task].shape == (len(PREFS), len(info.classes))


@pytest.mark.parametrize("channels", [3, 1])
def test_jpegs_decoded_on_the_device_are_converted_and_resized_there(cuda, monkeypatch, channels):
    """nvjpeg's output (uint8 on the device, stood in for: the fake device has no decoder) is
    converted, resized and cropped on the device, Pillow's way; nothing goes back to the host."""
    import torchvision.io

    from models_store.preprocess import Preprocess
    sizes = [(48, 64), (300, 200), (17, 17)]  # (h, w) of the files
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda files, mode, device: [
        torch.empty((3, h, w), dtype=torch.uint8, device=device) for h, w in sizes])
    pre = Preprocess(image_size=16, channels=channels)
    with on_host():
        files = [torch.zeros(10, dtype=torch.uint8) for _ in sizes]
    out = pre.decode_jpegs([cuda.host(f) for f in files], cuda.device)
    for image in out:
        on_device(image, torch.uint8)
        assert image.shape == (channels, 16, 16)
    on_device(pre.normalize(torch.stack(out)), torch.float32)


@pytest.mark.parametrize("kind", list(MAKERS))
def test_every_kind_serves_a_mixed_batch_on_the_device(cuda, families, kind):
    family = families[kind]
    model = family.servable(cuda.device, BF16, cache_bytes=2 * family.tower_bytes(BF16))
    images = cuda.host(family.manifest.preprocess.normalize(pixels(len(PREFS))))
    for _ in range(2):  # point-set: five members through room for two, misses materialised on the device
        with on_host():
            variants = family.resolve(PREFS)
            plan = model.plan(variants)
        logits = model.logits(images, variants, plan)
        for task in family.tasks:
            on_device(logits[task], torch.float32)
    if kind.startswith(("point-set", "vertices")):  # served by the generic servable
        assert model.materialized > 2 and len(model.cache) <= 2
        on_device(model.cache.get(next(iter(model.cache.entries))).conv1.weight, BF16)
    if kind.startswith("anchored-map"):  # PREFS: three vertices anchored (a = 1) through room for two, the rest: the base
        towers = [key for key in model.cache.entries if key[0] == "tower"]  # the maps share the cache
        assert model.materialized > 2 and len(towers) <= 2
        on_device(model.cache.get(towers[0]).conv1.weight, BF16)
        # the targets stay in host memory whatever K: each tower's build copied one task's piece
        assert all(t.device.type == "cpu" for d in (model.family.towards.tensors, model.family.towards.scales)
                   for t in d.values())
    if kind in ("feature-map", "anchored-map"):
        with on_host():
            distinct = family.resolve(PREFS)  # the maps' keys
        # solved on the device, each on its own, once: the anchored towers share the cache's room with
        # the maps, and go out first
        assert model.solved == len(set(distinct))
        on_device(model.cache.get(distinct[-1]), torch.float32)


@pytest.mark.parametrize("bits", [4, 32])
def test_an_anchored_family_holds_at_most_three_towers_on_the_device_at_any_k(cuda, tmp_path, bits):
    """Eight tasks, every vertex served through the default cache: the device holds the base, the
    maps and the cache, three towers where the maps leave the cache room for two (a ViT's maps are
    a fifth of a tower at K = 8; the micro tower's, two); the targets stay on the host, whatever K."""
    with on_host():
        tasks = {f"task{k}": ["a", "b"] for k in range(8)}
        family = open_family(tmp_path, make_feature_map_family(tmp_path, family_id="anchored-k8", tasks=tasks,
                                                               anchor=0.6, towards_bits=bits).name)
        cache_bytes = family.device_cache_bytes(BF16)
        vertices = torch.eye(8)
    tower, resident = family.tower_bytes(BF16), sum(c.resident_bytes for c in family.costs(BF16))
    assert cache_bytes == max(tower, 3 * tower - resident)
    model = family.servable(cuda.device, BF16, cache_bytes=cache_bytes)
    images = cuda.host(family.manifest.preprocess.normalize(pixels(8)))
    with on_host():
        variants = family.resolve(vertices)
        plan = model.plan(variants)
    model.logits(images, variants, plan)
    assert model.materialized == 8  # a corner tower per task, built on the device
    towers = [key for key in model.cache.entries if key[0] == "tower"]
    assert len(towers) == 1 and model.cache.bytes <= cache_bytes
    device = held_bytes(model, device="cuda")
    assert device <= max(3 * tower, resident + tower), (device, tower, resident)
    assert abs(device - (resident + model.cache.bytes)) <= 0.02 * device  # the costs say what the device holds
    assert held_bytes(model.family.towards) == sum(c.host_bytes for c in family.costs(BF16))


@pytest.mark.parametrize("kind", list(MAKERS))
def test_downloads_are_merged_on_the_device(cuda, families, kind):
    family = families[kind]
    pref = from_weights([0.1, 0.1, 0.8] if kind == "anchored-map" else [0.2, 0.3, 0.5], family.tasks)  # anchored: a = 0.5
    with on_host():  # the variant (a pick, a solve, an anchor) is host work; the tensors are merged on the device
        variant = family.variant(pref)
    tensors = dict(family.body.materialize(variant, cuda.device))
    assert [name for name, _, _ in family.tower_specs()] == list(tensors)
    for name, dtype, shape in family.tower_specs():
        on_device(tensors[name], dtype)
        assert tuple(tensors[name].shape) == shape


# --- the trainer -------------------------------------------------------------------------------

def optimiser_update(opt: torch.optim.Optimizer, params) -> None:
    """The update a step makes, with gradients set by hand (the fake device has no autograd engine)."""
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()


@pytest.mark.parametrize("method", ["pm", "pm++"])
def test_a_pareto_merging_step_on_the_device(cuda, pool, zoo, method):
    from models_store.kinds.lowrank import target_names
    from trainer.entropy_loop import FrozenTower
    from trainer.methods.ties import ties_preprocess
    from trainer.families.pareto.model import ParetoMerge
    from trainer.families.pareto.train import ParetoConfig, base_merge, optimizer, sample_preference, step_terms
    from trainer.taskpool import TaskPool
    with on_host():
        unlabeled = TaskPool(zoo, unlabeled_limit=8).unlabeled
        vectors = pool.task_vectors if method == "pm" else ties_preprocess(pool.task_vectors, 20)
    cfg = ParetoConfig(method=method, rank=2, batch_size=4, base="adamerging" if method == "pm" else "adamerging++")
    model = ParetoMerge(base_merge(pool, cfg, cuda.device), vectors, target_names(pool.keys, cfg.targets), cfg.rank,
                        cfg.init, cfg.lowrank_init, torch.Generator().manual_seed(0), cuda.device)
    frozen = FrozenTower(pool, unlabeled, cfg.batch_size, 0, cuda.device)
    pref = sample_preference(np.random.default_rng(0), len(pool.tasks), cfg.alpha, cuda.device)
    terms = step_terms(model, frozen, pref, cfg)
    for name in ("loss", "stch", "cos", "norm", "imbalance"):
        on_device(terms[name], torch.float32)
    opt = optimizer(model, cfg)
    optimiser_update(opt, [p for group in opt.param_groups for p in group["params"]])
    model.clamp_()
    on_device(model.base.coefficients)


@pytest.mark.parametrize("preference", [None, [0.7, 0.2, 0.1]], ids=["adamerging", "adamerging-pref"])
def test_an_adamerging_step_on_the_device(cuda, pool, zoo, preference):
    from trainer.entropy_loop import FrozenTower
    from trainer.methods.adamerging import LayerwiseMerge, entropy_loss
    from trainer.methods.preference import task_weights
    from trainer.taskpool import TaskPool
    with on_host():
        unlabeled = TaskPool(zoo, unlabeled_limit=8).unlabeled
    pref = None if preference is None else from_weights(preference, pool.tasks)
    merge = LayerwiseMerge(pool.pretrained, pool.task_vectors, 0.3, cuda.device)
    frozen = FrozenTower(pool, unlabeled, 4, 0, cuda.device)
    weights = torch.tensor(task_weights(pref, pool.tasks), device=cuda.device)
    on_device(entropy_loss(merge, frozen, weights), torch.float32)
    optimiser_update(torch.optim.Adam(merge.parameters(), lr=1e-3), merge.parameters())
    merge.clamp_()


def test_the_map_evaluator_on_the_device(cuda, pool, data):
    from trainer.evaluate import CoefficientEvaluator
    evaluator = CoefficientEvaluator(pool, data, cuda.device)
    state = evaluator.merged(np.array([0.3, 0.2, 0.1]))
    correct, loss = evaluator.evaluator.totals(state)
    on_device(correct)
    on_device(loss, torch.float32)
    assert correct.shape == loss.shape == (len(pool.tasks),)


def test_react_features_and_maps_on_the_device(cuda, pool, data, families):
    from models_store.tower import load_tower
    from trainer.families.react.learner import projected_features, task_map
    tower = load_tower(pool.architecture, pool.pretrained).to(cuda.device).eval()
    images = cuda.host(data["digits"].images)
    z_mtl = projected_features(tower, images, cuda.device)
    with on_host():
        finetuned = pool.zoo.finetuned("digits")
    z_ind = projected_features(load_tower(pool.architecture, finetuned).to(cuda.device), images, cuda.device)
    assert z_mtl.device.type == "cpu" and z_mtl.dtype == torch.float64  # the solves run on the host, in float64
    w, c = task_map(z_mtl, z_ind, 0.1)
    assert w.shape == c.shape == (z_mtl.shape[0],) * 2
    # and a family's maps of many preferences at once, on the device
    from models_store.kinds.feature_map import map_factors, preference_maps
    body = families["feature-map"].body
    maps = preference_maps(*map_factors(body.W, body.C, cuda.device), PREFS.tolist())
    on_device(maps, torch.float32)


def test_hm3_paths_on_the_device(cuda, pool, data):
    from trainer.families.hm3.dare_ties import dare_ties
    from trainer.families.hm3.paths import PathEvaluator
    with on_host():
        vectors = dare_ties(pool.task_vectors, 0.5, 100, 0)
    evaluator = PathEvaluator(pool, vectors, [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], data, True, cuda.device)
    evaluator._load_member(1)
    skip = len(evaluator.sources) - 1
    for path in [(0, 0), (1, skip), (2, 3)]:  # merge, fine-tuned, skip: every source of a block
        correct = evaluator.outcomes(1, path)
        assert [len(c) for c in correct] == [len(data[t].labels) for t in pool.tasks]
        for c in correct:
            on_device(c, torch.bool)


def test_front_and_select_on_the_device(cuda, pool, zoo, data, tmp_path_factory):
    from trainer.evaluate import Evaluator
    from trainer.select import entropies
    with on_host():  # a family over the zoo's tower and heads
        store = tmp_path_factory.mktemp("zoo-family")
        family = open_family(store, make_family(store, "zoo-family", tasks={t: zoo.task(t).classes for t in zoo.tasks},
                                                base=pool.pretrained, heads=pool.heads).name)
        prefs = [from_weights(w, family.tasks) for w in ([1, 0, 0], [0.2, 0.3, 0.5])]
    evaluator = Evaluator(family.manifest.architecture, family.heads, data, cuda.device)
    for pref in prefs:  # front: each preference's tower, merged on the device, on every task
        correct, loss = evaluator.totals(dict(family.iter_materialized(pref, cuda.device)))
        on_device(correct)
        on_device(loss, torch.float32)
    images = cuda.host(data["digits"].images)  # select: a head's entropy under each preference
    on_device(entropies(family, [family.heads["shapes"]], images, prefs, cuda.device), torch.float32)
    on_device(entropies(family, list(family.heads.values()), images, prefs, cuda.device), torch.float32)


# --- the tier itself -----------------------------------------------------------------------------

def test_the_tier_catches_a_host_tensor_in_a_device_forward(cuda, families, monkeypatch):
    family = families["lowrank"]
    real = LowRankServable.mixed_features

    def planted(self, images, prefs):  # a bug a CPU never shows: a position index made on the host
        positions = torch.arange(images.shape[0])
        return real(self, images, prefs) + positions[:, None]
    monkeypatch.setattr(LowRankServable, "mixed_features", planted)
    model = family.servable(cuda.device, BF16)
    images = cuda.host(family.manifest.preprocess.normalize(pixels(2)))
    with on_host():
        variants = family.resolve(PREFS[:2])
    with pytest.raises(FakeTensorDeviceMismatchError, match="cuda:0.*cpu|cpu.*cuda:0"):
        model.logits(images, variants)
