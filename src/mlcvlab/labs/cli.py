"""The ``lab`` command: ``mlcvlab lab list`` and
``mlcvlab lab run NAME|all [--quick] [--out DIR] [--seed S] [--set KEY=VALUE ...]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlcvlab.labs import registry

# The labs with a "device" setting, named in --device's help without importing every lab
# (tests/labs/test_framework.py checks this list against the presets).
DEVICE_LABS = ("bn-dropout", "cutout", "cyclical", "data-parallel", "depth-width",
               "inductive-bias", "memory", "nn4", "optimizers", "region-proposals")


def register(subparsers) -> None:
    """Add the ``lab`` command (with ``list`` and ``run``) to the top-level parser."""
    from mlcvlab.nn import conv
    p = subparsers.add_parser("lab", help="list and run the labs (classic studies rerun)")
    sub = p.add_subparsers(dest="lab_command", metavar="{list,run}")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    p_list = sub.add_parser("list", help="the labs, their studies and expected run times")
    p_list.set_defaults(func=cmd_list)

    p_run = sub.add_parser("run", help="run a lab (or 'all') and write its report")
    p_run.add_argument("name", help="lab name from `mlcvlab lab list`, or 'all'")
    which = p_run.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=registry.PRESETS, default=None,
                       help="quick (a smoke test, < 1 min), standard (the default: >= 3 seeds "
                            "with 95%% intervals, <= 60 min on 2 cores) or full (the study's "
                            "own protocol)")
    which.add_argument("--quick", action="store_true", help="same as --preset quick")
    which.add_argument("--full", action="store_true", help="same as --preset full")
    p_run.add_argument("--out", default=None, help="output folder (default lab_runs/<name>/)")
    p_run.add_argument("--seed", type=int, default=None,
                       help="random seed (default: the preset's, else 0)")
    p_run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable), read as the preset value's type")
    p_run.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true",
                       help="no progress bars (bars are drawn only on a terminal or in Jupyter)")
    p_run.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="cuda: train on the GPU (model.to('cuda')); for the labs with a "
                            f"'device' setting ({', '.join(DEVICE_LABS)}); same as --set "
                            "device=cuda")
    p_run.add_argument("--threads", type=int, default=None,
                       help="BLAS threads (default $MLCVLAB_THREADS or 1)")
    p_run.add_argument("--conv-algorithm", default="auto",
                       choices=conv.ALGORITHMS,
                       help="how 3x3 convolutions run (mlcvlab.nn.conv.set_algorithm): auto "
                            "(default), or fast (also Winograd F(4x4): up to ~1.1x faster "
                            "convolutional training, ~10x the float32 rounding); recorded in "
                            "config.json")
    p_run.set_defaults(func=cmd_run)


def _preset(args) -> str:
    if args.quick:
        return "quick"
    if args.full:
        return "full"
    return args.preset or registry.DEFAULT_PRESET


def cmd_list(args) -> int:
    labs, errors = registry.discover()
    rows = [(lab.name, lab.expected_time("quick"),
             lab.expected_time("standard") if lab.standard is not None else "(none yet)",
             lab.expected_time("full"), lab.study) for lab in labs]
    header = ("name", "quick", "standard", "full", "study")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print("Expected times on 2 CPU cores. quick: a smoke test, not evidence; standard (the "
          "default): >= 3 seeds with 95% intervals; full: the study's own protocol.")
    for r in [header, *rows]:
        print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    for name, err in errors.items():
        print(f"{name}: could not be imported ({err})", file=sys.stderr)
    return 0


def _device_override(args) -> None:
    """``--device D`` as the override ``device=D`` (a single lab without that setting: an
    error naming the labs that have it)."""
    if args.device is None:
        return
    if args.name != "all" and "device" not in registry.get_lab(args.name).quick:
        gpu_labs = [n for n in registry.lab_names() if "device" in registry.get_lab(n).quick]
        raise ValueError(f"lab {args.name} runs on the CPU only (no 'device' setting); "
                         f"--device applies to {', '.join(gpu_labs)}")
    args.overrides = list(args.overrides) + [f"device={args.device}"]


def cmd_run(args) -> int:
    _device_override(args)
    if args.name != "all":
        registry.run_lab(args.name, preset=_preset(args), out_dir=args.out, seed=args.seed,
                         overrides=args.overrides, show_progress=not args.no_progress,
                         conv_algorithm=args.conv_algorithm)
        return 0
    names = registry.lab_names()
    _check_overrides_known(names, args.overrides)
    failed = []
    for name in names:
        out = str(Path(args.out) / name) if args.out else None
        try:
            keys = registry.get_lab(name).quick
            own = [o for o in args.overrides if o.split("=", 1)[0].strip() in keys]
            registry.run_lab(name, preset=_preset(args), out_dir=out, seed=args.seed, overrides=own,
                             show_progress=not args.no_progress,
                             conv_algorithm=args.conv_algorithm)
        except Exception as err:  # keep going: report every failing lab at the end
            print(f"lab {name}: FAILED: {type(err).__name__}: {err}", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"{len(failed)} of {len(names)} labs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _check_overrides_known(names, overrides) -> None:
    """With 'all', a --set key must belong to at least one lab's config."""
    keys = set()
    for name in names:
        try:
            keys |= set(registry.get_lab(name).quick)
        except Exception:
            continue
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or key not in keys:
            raise ValueError(f"--set {item!r}: no lab has a config key {key!r} "
                             "(or the form is not key=value)")
