"""The test-time loop that AdaMerging and Pareto Merging share: a frozen tower whose weights come
from the learned merge (torch.func), the zoo's heads on the device, an unlabeled sampler, Adam,
a progress line per step and a clamp of the coefficients after every update."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from models_store.zoo import Head

from .objective import TaskObjectives, UnlabeledSampler, task_objectives
from .pool import ModelPool
from .progress import progress_bar

Step = Callable[[], tuple[torch.Tensor, dict[str, str]]]  # -> (loss, what the progress line shows)


class FrozenTower:
    """The zoo's tower (never updated: the merge supplies its weights) and heads, on one device."""

    def __init__(self, pool: ModelPool, unlabeled: dict[str, torch.Tensor], batch_size: int, seed: int,
                 device: torch.device):
        self.tower = pool.tower().to(device)
        for p in self.tower.parameters():
            p.requires_grad_(False)
        self.heads: dict[str, Head] = {t: h.to(device) for t, h in pool.heads.items()}
        missing = [t for t in pool.tasks if t not in unlabeled]
        if missing:
            raise ValueError(f"test-time merging needs unlabeled images of every task; none for {', '.join(missing)}")
        self.sampler = UnlabeledSampler({t: unlabeled[t] for t in pool.tasks}, batch_size, seed, device)

    def objectives(self, state: dict[str, torch.Tensor]) -> TaskObjectives:
        """Entropy and imbalance of every task under `state`, on the next unlabeled minibatches."""
        return task_objectives(self.tower, state, self.heads, self.sampler.next())


def optimise(step: Step, optimizer: torch.optim.Optimizer, clamp: Callable[[], None], steps: int, *, start: int = 0,
             desc: str, progress: bool = True, after: Optional[Callable[[int], None]] = None) -> None:
    """Run steps start..steps-1: loss, backward, Adam, clamp; `after(done)` once a step is done."""
    bar = progress_bar(range(start, steps), initial=start, total=steps, desc=desc, disable=not progress)
    for i in bar:
        loss, shown = step()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clamp()
        bar.set_postfix(**shown)
        if after is not None:
            after(i + 1)
