"""One shape of registry for the trainer's two kinds of entries, merging methods and family
learners: a name-keyed dict that refuses a name twice and names what it knows on a miss, of
entries that pair a function with its pydantic config (whose fields are the command's flags).

Lazy (FusionBench's way): the registry knows each name's module, and imports it on the name's first
use; importing the package imports no method. Listing every entry (`all()`, for help and reports)
imports them all."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable, Generic, Iterator, TypeVar

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
    def __init__(self, what: str, modules: dict[str, str]):
        super().__init__()
        self.what = what  # "merging method", "family learner": said in errors
        self.modules = modules  # name -> the module whose import registers it; listing order

    def add(self, name: str, entry: T) -> T:
        if dict.__contains__(self, name):
            raise ValueError(f"{self.what} {name!r} registered twice")
        if name not in self.modules:
            raise ValueError(f"{self.what} {name!r} is not in its registry's table of modules")
        self[name] = entry
        return entry

    def __missing__(self, name: str) -> T:
        module = self.modules.get(name)
        if module is not None:
            import_module(module)
            if dict.__contains__(self, name):
                return dict.__getitem__(self, name)
        raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(self.modules)}")

    def __contains__(self, name: object) -> bool:
        return name in self.modules

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def all(self) -> dict[str, T]:
        """Every entry, in listing order (imports every module)."""
        return {name: self[name] for name in self.modules}
