"""The `pmerge` command: a dispatcher that imports neither the trainer nor the service.

Subcommands are registered through the `pmerge.commands` entry points (pyproject.toml): each
names a list of `Command`s, the trainer's and the service's. So `pmerge demo` (trainer) serves
through the registered `serve` command, and the one dependency rule (trainer -> models_store <-
service) holds for the command line too. Flags of pydantic configs come from their fields
(models_store/flags.py): a new hyperparameter is one field with one description.

Only the command being run builds its flags (which may import what its configs need), and each
command imports what it runs when it runs: `pmerge --help`, the client commands and `pmerge
store ls` never import torch.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Optional

from pydantic import ValidationError

from . import StoreError
from .flags import describe_flags

GROUP = "pmerge.commands"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    description: Optional[str] = None
    check: Callable[[argparse.Namespace], None] = lambda args: None  # cheap checks before long work


def commands() -> dict[str, Command]:
    found: dict[str, Command] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name, reverse=True):  # trainer's first
        for cmd in ep.load():
            found[cmd.name] = cmd
    if not found:
        raise SystemExit("pmerge: no commands are registered: install the package (pip install -e .)")
    return found


def command(name: str) -> Command:
    return commands()[name]


# ---- main ------------------------------------------------------------------------------------

def build_parser(chosen: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only the `chosen` command's flags are built (every command's when None)."""
    parser = argparse.ArgumentParser(prog="pmerge", description="On-demand merged models: learn a family of "
                                     "merged open_clip towers once, serve any trade-off between the tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in commands().values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        if chosen is None or cmd.name == chosen:
            cmd.add_arguments(p)
        p.set_defaults(run=cmd.run)
    return parser


def chosen_command(argv: list[str]) -> str:
    """The subcommand named in argv (its first word that is no option), or '' for none."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(chosen_command(argv)).parse_args(argv)
    try:
        args.run(args)
    except (StoreError, ValueError, FileNotFoundError, KeyError) as e:
        message = describe_flags(e) if isinstance(e, ValidationError) else str(e)
        print(f"pmerge {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
