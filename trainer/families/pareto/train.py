"""Training a Pareto Merging family (paper Algorithm 1, objective eq. 10).

Each step: draw pref ~ Dirichlet(alpha 1); an unlabeled minibatch per task; H_k = mean entropy of
task k's head on its batch under theta(pref), D_k = KL(mean prediction || uniform) on that batch;
    L = mu log sum_k exp(pref_k H_k / mu)          smooth Tchebycheff, ideal point 0
        - cos_weight cos(pref, 1/H)                  aligns the model with the preference
        + norm_weight sum_layers ||G||_F^2           keeps the preference term small
        + diversity_weight sum_k D_k                 not in the paper: see below
then Adam on lambda (lr, clamped to [0, 1]) and on A, B, G (lowrank_lr).

The low-rank term starts, by default, as task arithmetic + preference's steering restricted to the
task vectors' top-r subspaces (`model.task_vector_factors`; zero at the equal preference); the
paper starts G at zero instead (--lowrank-init kaiming). From zero, the entropies barely separated
the preferences on the demo zoo: 0.7 on task k moved task k's accuracy by under 5 points, up on 1
task of 4. Started at the steering, the objective keeps and refines it, given a low-rank lr (3e-4)
below lambda's and a norm weight (0.01) that does not shrink it (bench/results/pm-sweep-*).

Why the diversity term: entropy alone is minimised fastest by giving every image of a task the same
confident class. The low-rank term has the freedom to do that, and on the demo zoo it does: with
the paper's objective the equal preference falls from 63 % to 56 %, PM++'s from 58 % to 43 %
(bench/results/pm-sweep-*, row "diversity0"). D_k is zero while a batch's predictions spread over the classes and log C at that collapse; it is SHOT's diversity term
(Liang et al. 2020), the usual guard of test-time entropy minimisation. It assumes each task's
classes are about equally frequent in its unlabeled images; with a heavily skewed task, lower
it. --diversity-weight 0 gives the paper's objective.

Checkpoints (safetensors + JSON metadata, never pickles) hold parameters, Adam state and every
random generator's state, so `--resume` after a kill reaches the uninterrupted run's result.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, ClassVar, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from models_store.checkpoint import load_state_dict, save_state_dict
from models_store.kinds import lowrank as lowrank_kind
from models_store.kinds.lowrank import target_names

from ...entropy_loop import FrozenTower, optimise
from ...methods import MergeContext, get_method
from ...methods.adamerging import LayerwiseMerge
from ...methods.ties import ties_preprocess
from ...objective import TaskObjectives, UnlabeledSampler
from ...pool import ModelPool
from ..registry import LearnContext, Learned, LearnerConfig
from .model import Base, FixedBase, LowRankInit, ParetoMerge

BaseName = Literal["adamerging", "adamerging++", "task-arithmetic", "ties", "tsv-m", "iso-c", "iso-cts", "wudi"]
LEARNED = {"adamerging": "pm", "adamerging++": "pm++"}  # the learned bases, and whose vectors they merge
DEFAULT_BASE: dict[str, BaseName] = {"pm": "tsv-m", "pm++": "adamerging++"}  # pm: the best of bench/results/pm-sweep-* (bases)


class ParetoConfig(LearnerConfig):
    id_exclude: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})
    method: Literal["pm", "pm++"] = "pm"
    rank: int = Field(16, ge=1, description="r of A [d_out, r], B [d_in, r], G [K, r, r]")
    targets: list[str] = Field(["in_proj", "out_proj"], description="adapted projections of every block: "
                                                                   "in_proj, out_proj")
    steps: int = Field(250, ge=1, description="optimisation steps")  # why 250: docs/pareto-merging.md
    batch_size: int = Field(16, ge=1, description="unlabeled images per task per step")
    lr: float = Field(1e-3, gt=0, description="Adam's lr for the coefficients lambda (AdaMerging's)")
    lowrank_lr: float = Field(3e-4, gt=0, description="Adam's lr for A, B and G (the paper has one lr for all)")
    alpha: float = Field(1.0, gt=0, description="Dirichlet concentration of the sampled preferences")
    mu: float = Field(0.1, gt=0, description="smoothing of the Tchebycheff scalarisation")
    # the paper's "0.1 and 1" are for its zero-started G; ours starts at the steering of task arithmetic +
    # preference (sum ||G||^2 ~ 35 on the demo zoo), which norm 0.1 shrinks away (bench/results/pm-sweep-*.json)
    cos_weight: float = Field(1.0, ge=0, description="weight of the cosine(pref, 1/H) reward")
    norm_weight: float = Field(0.01, ge=0, description="weight of the sum of ||G||_F^2")
    diversity_weight: float = Field(1.0, ge=0, description="weight of sum_k KL(mean prediction || uniform), "
                                                            "against one-class collapse; not in the paper (0)")
    init: float = Field(0.3, ge=0, le=1, description="initial task-vector coefficients")
    lowrank_init: LowRankInit = Field("task-vectors", description=(
        "task-vectors: A, B span the task vectors' top-r singular subspaces and G holds task arithmetic + "
        "preference's steering within them (not in the paper); kaiming: the paper's (A, B random, G zero)"))
    ties_k: float = Field(20.0, gt=0, le=100, description="pm++ and the adamerging++ base: TIES trim, percent kept")
    base: Optional[BaseName] = Field(None, description=(
        "the base merge, as `pmerge merge` makes it with its defaults: task-arithmetic, ties, tsv-m, iso-c, iso-cts, "
        "wudi (fixed), or adamerging / adamerging++, whose lambda pm learns with its low-rank term (on plain / TIES "
        "task vectors); pm and pm++ put their preference term on it, react corrects its features"))

    @model_validator(mode="after")
    def _method_default_base(self) -> "ParetoConfig":
        if self.base is None:
            self.base = DEFAULT_BASE[self.method]
        return self
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints (--resume continues from the last)")


def loss_terms(objectives: TaskObjectives, pref: torch.Tensor, model: ParetoMerge,
               cfg: ParetoConfig) -> dict[str, torch.Tensor]:
    entropies = objectives.entropy
    stch = cfg.mu * torch.logsumexp(pref * entropies / cfg.mu, dim=0)
    cosine = F.cosine_similarity(pref, 1.0 / entropies.clamp(min=1e-6), dim=0)
    norm = model.tensor_norm()
    diversity = objectives.imbalance.sum()
    return {"loss": stch - cfg.cos_weight * cosine + cfg.norm_weight * norm + cfg.diversity_weight * diversity,
            "stch": stch, "cos": cosine, "norm": norm, "imbalance": diversity}


def sample_preference(rng: np.random.Generator, k: int, alpha: float, device: torch.device) -> torch.Tensor:
    """pref ~ Dirichlet(alpha 1), [K] float32 on the device (drawn on the host: its state is checkpointed)."""
    return torch.tensor(rng.dirichlet([alpha] * k), dtype=torch.float32, device=device)


def step_terms(model: ParetoMerge, frozen: FrozenTower, pref: torch.Tensor, cfg: ParetoConfig) -> dict[str, torch.Tensor]:
    """One step's loss and its terms, on the next unlabeled minibatches (the device part of a step)."""
    objectives = frozen.objectives(model(pref))
    return loss_terms(objectives, pref, model, cfg) | {"entropies": objectives.entropy.detach()}


def optimizer(model: ParetoMerge, cfg: ParetoConfig) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": model.base.parameters(), "lr": cfg.lr},
                             {"params": model.lowrank_parameters(), "lr": cfg.lowrank_lr}])


def base_merge(pool: ModelPool, cfg: ParetoConfig, device: torch.device) -> Base:
    """The learned AdaMerging lambda, or a fixed merge of the method registry with its defaults."""
    name = cfg.base
    assert name is not None, "ParetoConfig's validator sets the method's default base"
    if name in LEARNED:
        vectors = pool.task_vectors if LEARNED[name] == "pm" else ties_preprocess(pool.task_vectors, cfg.ties_k)
        return LayerwiseMerge(pool.pretrained, vectors, cfg.init, device)
    merged = get_method(name)(MergeContext(pool=pool, device=device, seed=cfg.seed, progress=False))
    return FixedBase(merged, device)


class Checkpoint:
    """Parameters, Adam state and generator states in one safetensors file."""

    def __init__(self, path: Path):
        self.path = path

    def save(self, step: int, model: ParetoMerge, opt: torch.optim.Optimizer, sampler: UnlabeledSampler,
             pref_rng: np.random.Generator, cfg: ParetoConfig) -> None:
        tensors = {f"param.{k}": v for k, v in model.state_dict().items()}
        for idx, st in opt.state_dict()["state"].items():
            tensors |= {f"adam.{idx}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)) for k, v in st.items()}
        tensors["rng.sampler"] = sampler.generator.get_state()
        meta = {"step": str(step), "config": cfg.model_dump_json(),
                "pref_rng": json.dumps(pref_rng.bit_generator.state)}
        save_state_dict(self.path, tensors, metadata=meta)

    def load(self, model: ParetoMerge, opt: torch.optim.Optimizer, sampler: UnlabeledSampler,
             pref_rng: np.random.Generator, cfg: ParetoConfig) -> int:
        from safetensors import safe_open
        with safe_open(str(self.path), "pt") as f:
            meta = f.metadata()
        saved = ParetoConfig.model_validate_json(meta["config"])
        if saved.model_dump(exclude=set(cfg.id_exclude)) != cfg.model_dump(exclude=set(cfg.id_exclude)):
            raise ValueError(f"{self.path} was written with another configuration; rerun without --resume")
        tensors = load_state_dict(self.path)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("param.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("adam."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        opt_state = opt.state_dict()
        opt_state["state"] = state
        opt.load_state_dict(opt_state)
        sampler.generator.set_state(tensors["rng.sampler"])
        pref_rng.bit_generator.state = json.loads(meta["pref_rng"])
        return int(meta["step"])


def learn(ctx: LearnContext, cfg: ParetoConfig, on_checkpoint: Optional[Callable[[int], None]] = None) -> Learned:
    """Train the low-rank family, checkpointing in the run directory (`ctx.resume` continues from it)."""
    torch.manual_seed(cfg.seed)
    pool = ctx.pool
    vectors = pool.task_vectors if cfg.method == "pm" else ties_preprocess(pool.task_vectors, cfg.ties_k)
    targets = target_names(pool.keys, cfg.targets)
    init_rng = torch.Generator().manual_seed(cfg.seed)
    model = ParetoMerge(base_merge(pool, cfg, ctx.device), vectors, targets, cfg.rank, cfg.init, cfg.lowrank_init,
                        init_rng, ctx.device)
    del vectors
    opt = optimizer(model, cfg)
    frozen = FrozenTower(pool, ctx.unlabeled, cfg.batch_size, cfg.seed + 1, ctx.device)
    pref_rng = np.random.Generator(np.random.PCG64(cfg.seed + 2))
    checkpoint = Checkpoint(ctx.run_dir / "checkpoint.safetensors")
    start = checkpoint.load(model, opt, frozen.sampler, pref_rng, cfg) if ctx.resume and checkpoint.path.is_file() else 0
    if start:
        print(f"resuming {ctx.family_id} at step {start}/{cfg.steps}")

    k = len(pool.tasks)
    last: dict[str, torch.Tensor] = {"entropies": torch.zeros(k)}

    def step():
        last.update(step_terms(model, frozen, sample_preference(pref_rng, k, cfg.alpha, ctx.device), cfg))
        return last["loss"], {"loss": f"{last['loss'].item():.3f}",
                              "H": " ".join(f"{h:.2f}" for h in last["entropies"].cpu().tolist())}

    def after(done: int) -> None:
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            checkpoint.save(done, model, opt, frozen.sampler, pref_rng, cfg)
            if on_checkpoint is not None:
                on_checkpoint(done)

    optimise(step, opt, model.clamp_, cfg.steps, start=start, desc=f"train {cfg.method}", progress=ctx.progress,
             after=after)
    entropies = last.pop("entropies")
    base, lowrank = model.export({n: t.dtype for n, t in pool.pretrained.items()})
    return Learned(kind=lowrank_kind.NAME, kind_params={"rank": cfg.rank, "targets": targets},
                   files=lowrank_kind.family_files(base, lowrank),
                   metrics={"steps": cfg.steps, "last_loss": {n: round(v.item(), 5) for n, v in last.items()},
                            "last_entropies": dict(zip(pool.tasks, [round(h, 5) for h in entropies.tolist()]))})
