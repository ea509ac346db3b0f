"""One shape of registry for the trainer's two kinds of entries, merging methods and family
learners: a name-keyed dict that refuses a name twice and names what it knows on a miss, of
entries that pair a function with its pydantic config (whose fields are the command's flags)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")
C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True)
class Entry(Generic[C]):
    name: str
    config: type[C]
    fn: Callable[..., Any]
    summary: str


class Registry(dict[str, T], Generic[T]):
    def __init__(self, what: str):
        super().__init__()
        self.what = what  # "merging method", "family learner": said in errors

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self[name] = entry
        return entry

    def __missing__(self, name: str) -> T:
        raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(self)}")
