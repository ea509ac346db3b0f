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
from pathlib import Path
from typing import Callable, Optional

from pydantic import ValidationError

from . import StoreError
from .flags import describe_flags

GROUP = "pmerge.commands"


@dataclass(frozen=True)
class Command:
    """A subcommand. With `choices` (name -> summary: the learners of `train`, the methods of
    `merge`) it is `pmerge NAME CHOICE [flags]`, `add_arguments(parser, choice)` builds the flags of
    the chosen one only, and `choice_flag` is the older spelling `--flag CHOICE` (still read, with a
    deprecation line). With `run_file`, `--config FILE.yaml` gives any flag's value (its key is the
    flag's name, `_` for `-`; the choice under `choice_name`); flags given override the file."""
    name: str
    help: str
    add_arguments: Callable[..., object]  # what it returns (the parser, for `python -m service`) is not read
    run: Callable[[argparse.Namespace], None]
    description: Optional[str] = None
    check: Callable[[argparse.Namespace], None] = lambda args: None  # cheap checks before long work
    choices: Optional[Callable[[], dict[str, str]]] = None
    choice_name: str = ""  # what a choice is: learner, method
    choice_flag: str = ""
    default_choice: Optional[str] = None
    run_file: bool = False


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

def build_parser(chosen: str = "", choice: str = "") -> argparse.ArgumentParser:
    """The parser; only the `chosen` command's flags are built, and of a command with choices only
    the `choice`'s."""
    parser = argparse.ArgumentParser(prog="pmerge", description="On-demand merged models: learn a family of "
                                     "merged open_clip towers once, serve any trade-off between the tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in commands().values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        p.set_defaults(run=cmd.run, choice=None)
        if cmd.name != chosen:
            continue
        if cmd.choices is None:
            cmd.add_arguments(p)
            add_run_file(p, cmd)
            continue
        inner = p.add_subparsers(dest="choice", required=True, metavar=cmd.choice_name.upper())
        for name, summary in cmd.choices().items():
            q = inner.add_parser(name, help=summary, description=summary)
            if name == choice:
                cmd.add_arguments(q, name)
                add_run_file(q, cmd)
    return parser


def add_run_file(p: argparse.ArgumentParser, cmd: Command) -> None:
    if cmd.run_file:
        p.add_argument("--config", metavar="RUN.yaml", help="a run file: any of these flags' values, by name "
                       "(`pmerge store run ID` writes a published family's); flags given override it")


def chosen_command(argv: list[str]) -> str:
    """The subcommand named in argv (its first word that is no option), or '' for none."""
    return next((a for a in argv if not a.startswith("-")), "")


def read_run_file(path: str) -> dict:
    import yaml  # only when a run file is given: `pmerge --help` stays light

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} should be a mapping of flag names to values, got {type(data).__name__}")
    return data


def flag_value(argv: list[str], flag: str) -> Optional[str]:
    """The value of `--flag V` or `--flag=V` in argv, else None."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.partition("=")[2]
    return None


def resolve_choice(cmd: Command, argv: list[str]) -> tuple[list[str], str]:
    """argv with the choice right after the command (taken from the older `--flag CHOICE`, the run
    file, or the default), and the choice."""
    assert cmd.choices is not None
    at = argv.index(cmd.name) + 1
    known = cmd.choices()
    if at < len(argv) and argv[at] in known:
        return argv, argv[at]
    flag = "--" + cmd.choice_flag
    old = flag_value(argv, flag)
    if old is not None:
        print(f"pmerge {cmd.name}: note: `{flag} {old}` is deprecated (it goes in a later release): "
              f"write `pmerge {cmd.name} {old} ...`", file=sys.stderr)
        rest = [a for i, a in enumerate(argv) if not (a == flag or a.startswith(flag + "=")
                                                      or (i and argv[i - 1] == flag))]
        return rest[:at] + [old] + rest[at:], old
    if (run := flag_value(argv, "--config")) is not None and Path(run).is_file():
        named = read_run_file(run).get(cmd.choice_name)
        if isinstance(named, str) and named in known:
            return argv[:at] + [named] + argv[at:], named
    if cmd.default_choice and not {"-h", "--help"} & set(argv[at:]):
        return argv[:at] + [cmd.default_choice] + argv[at:], cmd.default_choice
    return argv, ""


def apply_run_file(parser: argparse.ArgumentParser, args: argparse.Namespace, cmd: Command, argv: list[str]) -> None:
    """Fill what the command line left unset from `--config` (given flags win); a key that is no
    flag of the command is an error that names it."""
    path = getattr(args, "config", None)
    if not path:
        return
    data = read_run_file(path)
    if cmd.choice_name in data and data[cmd.choice_name] != args.choice:
        raise ValueError(f"{path} is a run of {cmd.choice_name} {data[cmd.choice_name]!r}, not {args.choice!r}")
    data.pop(cmd.choice_name, None)
    actions = {opt[2:].replace("-", "_"): a for a in subparser_actions(parser, args) for opt in a.option_strings
               if opt.startswith("--") and opt not in ("--help", "--config")}
    unknown = sorted(set(data) - set(actions))
    if unknown:
        raise ValueError(f"{path}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} no setting of "
                         f"pmerge {cmd.name}{' ' + args.choice if args.choice else ''}")
    for name, value in data.items():
        action = actions[name]
        if any(word == opt or word.startswith(opt + "=") for opt in action.option_strings for word in argv):
            continue  # given on the command line: it wins
        if isinstance(value, dict) and isinstance(action, argparse._AppendAction):
            value = [f"{k}={v}" for k, v in value.items()]  # NAME=SPEC flags given as a mapping
        setattr(args, action.dest, value)


def subparser_actions(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[argparse.Action]:
    """The actions of the (sub)parser that parsed the command's flags."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return parser._actions
        key = getattr(args, subs[0].dest, None)
        if key not in subs[0].choices:
            return parser._actions
        parser = subs[0].choices[key]


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = chosen_command(argv)
    cmd = commands().get(chosen)
    choice = ""
    try:
        if cmd is not None and cmd.choices is not None:
            argv, choice = resolve_choice(cmd, argv)
        parser = build_parser(chosen, choice)
        args, extra = parser.parse_known_args(argv)
        if extra:
            flags = [a for a in extra if a.startswith("--")]
            if flags and cmd is not None and choice:
                raise ValueError(f"{cmd.choice_flag} {choice} takes no {', '.join(f.partition('=')[0] for f in flags)}")
            parser.parse_args(argv)  # argparse's own error
        if cmd is not None:
            apply_run_file(parser, args, cmd, argv)
        args.run(args)
    except (StoreError, ValueError, FileNotFoundError, KeyError) as e:
        message = describe_flags(e) if isinstance(e, ValidationError) else str(e)
        print(f"pmerge {chosen}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
