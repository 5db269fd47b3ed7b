"""``mlcvlab data info [NAME]`` and ``mlcvlab data download NAME``."""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from . import datasets, embedded


def register(subparsers) -> None:
    """Add the ``data`` command with its ``info`` and ``download`` sub-commands."""
    parser = subparsers.add_parser("data", help="datasets: where they are, download them")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    names = list(datasets.EMBEDDED_NAMES) + list(datasets.REMOTE)

    info = sub.add_parser("info", help="show each dataset: present/embedded, where, sizes, "
                                       "class counts")
    info.add_argument("name", nargs="?", type=_dataset_name(names),
                      help=f"one dataset of {', '.join(names)} (default: all)")
    info.add_argument("--data-root", "--root", dest="root", default=None,
                      help="also look in this folder")
    info.set_defaults(func=run_info)

    down = sub.add_parser("download", help="download a dataset into ~/.mlcvlab/data/NAME "
                                           "(or --root, or $MLCVLAB_DATA/NAME)")
    down.add_argument("name", type=_dataset_name(list(datasets.REMOTE)),
                      help=", ".join(datasets.REMOTE))
    down.add_argument("--data-root", "--root", dest="root", default=None,
                      help="download into this folder")
    down.set_defaults(func=run_download)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _dataset_name(names: List[str]):
    """An argparse type: a dataset name, with '-' and '_' and case both accepted."""
    import argparse

    def parse(text: str) -> str:
        try:
            key = datasets.canonical_name(text.replace("-", "_"))
        except ValueError:
            key = None
        if key not in names:
            raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; choose one of "
                                             f"{', '.join(names)}")
        return key
    return parse


def _counts(labels: np.ndarray, n_classes: int) -> str:
    return " ".join(str(c) for c in np.bincount(labels, minlength=n_classes))


def describe(name: str, root=None) -> Dict[str, object]:
    """What ``data info`` prints for one dataset, as a dict (status, where, per-split rows)."""
    if name in datasets.EMBEDDED_NAMES:
        where = ("scikit-learn's digits, copied into the package" if name == "digits"
                 else str(embedded.embedded_path(name)))
        splits = {}
        try:
            for split in datasets.SPLITS:
                _, y = datasets.load(name, split)
                splits[split] = (len(y), _counts(y, 10))
            status = "embedded"
        except (ValueError, FileNotFoundError) as err:
            status = f"embedded, BROKEN: {err}"
        return {"name": name, "status": status, "where": where, "splits": splits}
    spec = datasets.REMOTE[name]
    splits: Dict[str, object] = {}
    status, where = "present", ""
    for split in datasets.SPLITS:
        source = datasets.find_source(name, split, root)
        if source is None:
            status = "missing" if not splits else "partial"
            continue
        where = str(source.folder)
        try:
            _, labels, _ = datasets.load_raw(name, split, root, verify=True,
                                             download_missing=False)
            splits[split] = (len(labels), _counts(np.asarray(labels), len(spec.classes)))
        except ValueError as err:
            status = f"CORRUPT: {err}"
    if not splits and status == "missing":
        where = ("not found in: " + ", ".join(str(d) for d in datasets.search_dirs(name, root))
                 + f"\n               get it: mlcvlab data download {name} (needs the network), "
                 "or put the files in one of those folders (MLCVLAB_DATA=folder)")
    return {"name": name, "status": status, "where": where, "splits": splits}


def format_info(rows: List[Dict[str, object]]) -> str:
    lines = []
    for row in rows:
        lines.append(f"{row['name']:<14} {row['status']}")
        lines.append(f"{'':<14} where: {row['where']}")
        for split, (n, counts) in row["splits"].items():
            lines.append(f"{'':<14} {split:<5} {n:>6} images; per class: {counts}")
    return "\n".join(lines)


def run_info(args) -> int:
    names: List[str] = ([args.name] if args.name else
                        list(datasets.EMBEDDED_NAMES) + list(datasets.REMOTE))
    print(format_info([describe(n, args.root) for n in names]))
    return 0


def run_download(args) -> int:
    spec = datasets.REMOTE[args.name]
    for split in datasets.SPLITS:
        X, y, source = datasets.load_raw(args.name, split, root=args.root, verify=True)
        print(f"{args.name} {split}: {len(y)} images {X.shape[1:]} in {source.folder}")
    print(f"{spec.title}: ready")
    return 0
