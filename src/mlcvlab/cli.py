"""The ``mlcvlab`` command.

Each subsystem registers its own sub-commands: a module with a
``register(subparsers)`` function that adds a parser and sets ``func`` (called
with the parsed args, returns an exit code). This file only wires them up.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# module path -> registers these sub-commands
_SUBCOMMANDS = [
    "mlcvlab.train.cli",      # train, eval, summary
    "mlcvlab.labs.cli",       # lab list / lab run
    "mlcvlab.data.cli",       # data info / data download
    "mlcvlab.bench",          # bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcvlab",
        description="Deep learning from scratch on NumPy, and labs of the classic studies.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # sub-system not built yet
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"mlcvlab {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
