"""Shared plumbing for the three command lines (``python -m aggregator|shards|bench``).

Each subcommand lives in its own module, imported only when it runs, exposing
``add_arguments(parser)`` and ``run(args) -> int``. Bad input is reported as one line on
stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

from aggregator.errors import AggregatorError

__all__ = ["LOOP_CHOICES", "CommandModule", "run_commands", "run_loop"]

T = TypeVar("T")

#: Event loops a command can run on; uvloop is the default where it is installed.
LOOP_CHOICES = ("uvloop", "asyncio")


class CommandModule(Protocol):
    """What a subcommand module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line and exit status 2, as argparse does
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_commands(
    prog: str,
    description: str,
    commands: Mapping[str, tuple[str, str]],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` and run the chosen subcommand.

    ``commands`` maps a name to ``(module path, one-line help)``. Every
    :class:`AggregatorError` (and ``ValueError`` from bad input) becomes a one-line error and
    exit status 2.
    """
    parser = _Parser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_path, help_text) in commands.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = cast(CommandModule, importlib.import_module(module_path))
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_module=module)
    args = parser.parse_args(argv)
    module = cast(CommandModule, args._module)
    try:
        return module.run(args)
    except (AggregatorError, ValueError, OSError) as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run_loop(main: Callable[[], Coroutine[Any, Any, T]], loop: str = "uvloop") -> T:
    """Run ``main()`` on the chosen event loop (``uvloop`` falls back to asyncio if absent)."""
    if loop not in LOOP_CHOICES:
        raise ValueError(f"unknown loop {loop!r}; choose from {', '.join(LOOP_CHOICES)}")
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # not installed (e.g. Windows): the standard loop it is
            pass
        else:
            return uvloop.run(main())
    return asyncio.run(main())
