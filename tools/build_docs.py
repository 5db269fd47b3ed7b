#!/usr/bin/env python
"""Build the API reference of every mlcvlab module from its docstrings (pdoc).

    pip install ".[docs]" && python tools/build_docs.py [OUT]     # default OUT: docs/api

Every module is named explicitly, so a package's ``__all__`` (which lists the names it
re-exports) does not hide its submodules from the reference.
"""
from __future__ import annotations

import pkgutil
import sys
from pathlib import Path

import pdoc

import mlcvlab


def modules() -> list:
    names = ["mlcvlab"]
    for info in pkgutil.walk_packages(mlcvlab.__path__, prefix="mlcvlab."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/api")
    pdoc.render.configure(docformat="markdown", footer_text="mlcvlab " + mlcvlab.__version__)
    pdoc.pdoc(*modules(), output_directory=out)
    print(f"API reference of {len(modules())} modules written to {out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
