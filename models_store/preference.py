"""The one preference parser (docs/formats.md, "Preferences"), used by every command and route.

Accepted: positional `0.2,0.8` (one number per task, in task order) or named
`digits:0.7,fashion:0.3` (missing tasks get 0). Values must be finite, >= 0, with a positive
sum. The canonical preference is the normalised vector rounded to 1e-6, printed named.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

DECIMALS = 6
# The grammar the parser reads, as a regular expression for API schemas (the parser is the judge:
# it also checks the count of values, the task names and a positive sum, and names what is wrong).
_NUMBER = r"\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
PREFERENCE_PATTERN = (rf"^\s*({_NUMBER}(\s*,\s*{_NUMBER})*"
                      rf"|{_NAME}\s*:\s*{_NUMBER}(\s*,\s*{_NAME}\s*:\s*{_NUMBER})*)\s*$")


class PreferenceError(ValueError):
    """The preference text is malformed or not on the simplex; the message names the problem."""


@dataclass(frozen=True)
class Preference:
    tasks: tuple[str, ...]
    weights: tuple[float, ...]  # normalised, rounded to 1e-6

    @property
    def canonical(self) -> str:
        return ",".join(f"{t}:{_fmt(w)}" for t, w in zip(self.tasks, self.weights))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weights))

    def tensor(self, dtype: "torch.dtype | None" = None, device: "str | torch.device" = "cpu") -> "torch.Tensor":
        import torch  # the parser itself is torch-free: the HTTP client parses preferences too
        return torch.tensor(self.weights, dtype=dtype or torch.float32, device=device)

    def __str__(self) -> str:
        return self.canonical


def _fmt(w: float) -> str:
    text = f"{w:.{DECIMALS}f}".rstrip("0").rstrip(".")
    return text or "0"


def equal_preference(tasks: Sequence[str]) -> Preference:
    return from_weights([1.0] * len(tasks), tasks)


def from_weights(values: Sequence[float], tasks: Sequence[str]) -> Preference:
    """Validate and normalise raw weights given in task order."""
    tasks = tuple(tasks)
    if len(values) != len(tasks):
        raise PreferenceError(
            f"expected {len(tasks)} preference values (one per task: {', '.join(tasks)}), got {len(values)}")
    for task, v in zip(tasks, values):
        if not math.isfinite(v):
            raise PreferenceError(f"preference for {task!r} is not a finite number: {v}")
        if v < 0:
            raise PreferenceError(f"preference for {task!r} is negative: {v}")
    try:
        total = math.fsum(values)
    except OverflowError:  # each value is finite, their sum is not
        raise PreferenceError(f"preference values sum to more than the largest float ({sys.float_info.max:.3g}); "
                              f"scale them down") from None
    if total <= 0:
        raise PreferenceError("preference values sum to zero; at least one must be positive")
    return Preference(tasks, tuple(round(v / total, DECIMALS) for v in values))


def canonical_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """Weights already on the simplex at the canonical precision: a preference's float32 and float64
    rows (the engine's, a download's) give one key."""
    return tuple(round(float(w), DECIMALS) for w in weights)


def parse_preference(text: str | None, tasks: Sequence[str]) -> Preference:
    """Parse positional or named preference text; None or blank gives the equal preference."""
    tasks = tuple(tasks)
    if text is None or not text.strip():
        return equal_preference(tasks)
    parts = [p.strip() for p in text.strip().split(",")]
    if any(not p for p in parts):
        raise PreferenceError(f"empty value in preference {text!r}")
    named = [":" in p for p in parts]
    if any(named) and not all(named):
        raise PreferenceError(f"preference {text!r} mixes named (task:value) and positional values")
    if all(named):
        values = dict.fromkeys(tasks, 0.0)
        seen: set[str] = set()
        for part in parts:
            name, _, raw = part.partition(":")
            name = name.strip()
            if name not in values:
                raise PreferenceError(f"unknown task {name!r} in preference; tasks are: {', '.join(tasks)}")
            if name in seen:
                raise PreferenceError(f"task {name!r} appears twice in preference")
            seen.add(name)
            values[name] = _number(raw, name)
        return from_weights(list(values.values()), tasks)
    return from_weights([_number(p, f"position {i + 1}") for i, p in enumerate(parts)], tasks)


def _number(raw: str, where: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise PreferenceError(f"preference value {raw.strip()!r} for {where} is not a number") from None
