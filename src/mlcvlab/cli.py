"""The ``mlcvlab`` command.

Each subsystem registers its own sub-commands: a module with a
``register(subparsers)`` function that adds a parser and sets ``func`` (called
with the parsed args, returns an exit code). This file only wires them up.
"""
from __future__ import annotations

import argparse
import importlib
import os
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
    from mlcvlab import __version__
    parser.add_argument("--version", action="version", version=f"mlcvlab {__version__}")
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


def blas_threads(args) -> int:
    """BLAS threads for this process: ``--threads``, else $MLCVLAB_THREADS, else 1.

    One thread is the default because the handout-scale GEMMs gain little from a
    second one, while OpenBLAS threads competing for 2 cores with MPI ranks, the
    loader's prefetch thread or other work were measured to slow small GEMMs up
    to 100x. Pass ``--threads 2`` for large CNNs on an idle machine.
    """
    value = getattr(args, "threads", None)
    if value is None:
        value = os.environ.get("MLCVLAB_THREADS", "1")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"MLCVLAB_THREADS must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"--threads / MLCVLAB_THREADS must be >= 1, got {n}")
    return n


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from mlcvlab import backend
    backend.keep_freed_memory()           # every command trains or benchmarks: see its docstring
    try:
        if args.command == "bench":          # the benchmark sets its own thread counts
            return int(args.func(args) or 0)
        from threadpoolctl import threadpool_limits
        with threadpool_limits(blas_threads(args)):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"mlcvlab {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
