"""The lab registry: declare a lab with :func:`lab`, find it with :func:`get_lab`,
run it with :func:`run_lab`.

Lab modules are the modules of the ``mlcvlab.labs`` package other than the
framework's own (registry, cli, report) and names starting with "_"; a module
``dying_relu.py`` holds the lab named ``dying-relu``. Modules are imported
only when needed, and one that fails to import is reported by :func:`discover`
instead of breaking the others.
"""
from __future__ import annotations

import importlib
import json
import math
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

FRAMEWORK_MODULES = {"registry", "cli", "report", "stats", "checks"}
PRESETS = ("quick", "standard", "full")
DEFAULT_PRESET = "standard"
SMOKE_TEST_BANNER = (
    "> **Smoke test (quick preset).** This run only checks that the lab runs end to end: too few "
    "seeds, epochs or samples to measure the study's effect. Its numbers and verdicts are not "
    "evidence; run the `standard` preset (the default) for that.")
# Under the title of a report whose lab ran with another conv algorithm than "auto".
CONV_ALGORITHM_NOTE = (
    "> **Note:** 3x3 convolutions ran with `set_algorithm({!r})` (`--conv-algorithm`), not "
    "the default: {}")
CONV_ALGORITHM_MEANING = {
    "fast": "Winograd F(4x4, 3x3) where it is faster, at about 10x the float32 rounding error "
            "of a direct convolution per layer.",
    "winograd4": "every 3x3 stride-1 convolution as Winograd F(4x4, 3x3), at about 10x the "
                 "float32 rounding error of a direct convolution per layer.",
    "winograd": "every 3x3 stride-1 convolution as Winograd F(2x2, 3x3).",
    "im2col": "every convolution as im2col + GEMM.",
    "direct": "every 3x3 and 5x5 stride-1 convolution as the direct kernels.",
}
# Optional keys of expected_seconds, "<preset>_embedded": the preset's time when the study's
# dataset is not on disk and the lab runs on its embedded substitute (mnist10k, fashion10k).
EMBEDDED = "full_embedded"

RunFn = Callable[[Dict[str, Any], Path, Callable], Dict[str, Any]]


@dataclass(frozen=True)
class Lab:
    """A registered lab: name, the study it reruns, three preset configs and their expected
    seconds on 2 CPU cores.

    quick: a smoke test (< 1 min; its report opens with a banner saying so). standard (the
    default): the study's effect measured over >= 3 seeds with 95% intervals, <= 60 min.
    full: the paper's own protocol, for a GPU or a cluster. ``standard`` is None for a lab
    that has not been given one yet; running it then needs --quick or --full.
    """

    name: str
    study: str
    quick: Dict[str, Any]
    full: Dict[str, Any]
    expected_seconds: Dict[str, float]
    run: RunFn
    module: str = field(default="")
    standard: Optional[Dict[str, Any]] = None

    def expected_time(self, preset: str) -> str:
        """The expected run time of ``preset`` in words, e.g. "~8 h (~1 h on embedded data)"."""
        text = "~" + format_duration(self.expected_seconds[preset])
        embedded = self.expected_seconds.get(f"{preset}_embedded")
        if embedded is not None:
            text += f" (~{format_duration(embedded)} on embedded data)"
        return text

    def presets(self) -> List[str]:
        """The presets this lab defines, in PRESETS order."""
        return [p for p in PRESETS if p != "standard" or self.standard is not None]

    def preset(self, which: str) -> Dict[str, Any]:
        """A fresh copy of the "quick", "standard" or "full" config."""
        if which not in PRESETS:
            raise ValueError(f"lab {self.name}: preset must be one of {PRESETS}, got {which!r}")
        if which == "standard" and self.standard is None:
            raise ValueError(f"lab {self.name} has no standard preset yet; run it with --quick "
                             "(a smoke test) or --full (the study's protocol)")
        config = {"quick": self.quick, "standard": self.standard, "full": self.full}[which]
        return json.loads(json.dumps(config))


_REGISTRY: Dict[str, Lab] = {}


def format_duration(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable: "40 s", "15 min", "8 h", "35 d"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def lab(name: str, study: str, quick: Dict[str, Any], full: Dict[str, Any],
        expected_seconds: Dict[str, float],
        standard: Optional[Dict[str, Any]] = None) -> Callable[[RunFn], RunFn]:
    """Decorator registering ``run(config, out_dir, progress) -> results`` as lab ``name``.

    quick / standard / full: JSON-able dicts with the same keys (``--set`` coerces to their
    value types); expected_seconds: {"quick": s, "standard": s, "full": s} on 2 CPU cores,
    plus optionally ``"full_embedded": s``, the full preset on the embedded substitute data.
    """
    given = {"quick": quick, "full": full}
    if standard is not None:
        given["standard"] = standard
    for which, config in given.items():
        if set(config) != set(quick):
            raise ValueError(f"lab {name}: every preset needs the same keys; quick has "
                             f"{sorted(quick)}, {which} has {sorted(config)}")
    optional = {f"{p}_embedded" for p in PRESETS}
    if not set(given) <= set(expected_seconds) <= set(PRESETS) | optional:
        raise ValueError(f"lab {name}: expected_seconds needs keys {sorted(given)} (and "
                         f"optionally 'standard_embedded', 'full_embedded': the time on the "
                         f"embedded substitute data), got {sorted(expected_seconds)}")

    def register(run: RunFn) -> RunFn:
        _REGISTRY[name] = Lab(name, study, dict(quick), dict(full), dict(expected_seconds), run,
                              run.__module__, dict(standard) if standard is not None else None)
        return run

    return register


def module_names() -> List[str]:
    """Names of the lab modules in the mlcvlab.labs package (without importing them)."""
    import mlcvlab.labs as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if m.name not in FRAMEWORK_MODULES and not m.name.startswith("_"))


def lab_names() -> List[str]:
    """Lab names, e.g. 'dying-relu' for module dying_relu.py."""
    return [m.replace("_", "-") for m in module_names()]


def get_lab(name: str) -> Lab:
    """Import the module of lab ``name`` (``dying-relu`` or ``dying_relu``) and return its
    registration."""
    if name not in _REGISTRY and name.replace("_", "-") in lab_names():
        name = name.replace("_", "-")
    if name not in _REGISTRY:
        names = lab_names()
        if name not in names:
            raise ValueError(f"unknown lab {name!r}; available labs: {', '.join(names)} "
                             "(see `mlcvlab lab list`)")
        importlib.import_module(f"mlcvlab.labs.{name.replace('-', '_')}")
        if name not in _REGISTRY:
            raise RuntimeError(f"module mlcvlab.labs.{name.replace('-', '_')} does not register "
                               f"a lab named {name!r} (use @lab(name={name!r}, ...))")
    return _REGISTRY[name]


def discover() -> Tuple[List[Lab], Dict[str, str]]:
    """All labs that import cleanly, and {name: error message} for those that do not."""
    labs, errors = [], {}
    for name in lab_names():
        try:
            labs.append(get_lab(name))
        except Exception as err:  # one broken lab must not hide the others
            errors[name] = f"{type(err).__name__}: {err}"
    return labs, errors


# -- config overrides -----------------------------------------------------------------
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def coerce(text: str, like: Any, key: str = "value") -> Any:
    """Parse ``text`` into the type of the preset value ``like`` (bool, int, float, str, list,
    None).
    """
    try:
        if isinstance(like, bool):
            low = text.strip().lower()
            if low not in _TRUE | _FALSE:
                raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
            return low in _TRUE
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError("the value must be a finite number")
            return value
        if isinstance(like, (list, tuple)):
            parts = [p for p in text.strip("[]() ").split(",") if p.strip()]
            return [coerce(p.strip(), like[0] if like else "", key) for p in parts]
        if like is None:
            return json.loads(text) if text.strip() not in ("", "none", "None") else None
        return text
    except (ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"--set {key}={text}: cannot read it as {type(like).__name__} "
                         f"(the preset value is {like!r}): {err}") from None


def apply_overrides(config: Dict[str, Any], overrides: Sequence[str],
                    lab_name: str = "") -> Dict[str, Any]:
    """Return ``config`` updated by "key=value" strings, each coerced to the preset value's type."""
    config = dict(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in config:
            raise ValueError(f"lab {lab_name}: unknown config key {key!r}; valid keys: "
                             f"{', '.join(sorted(config))}")
        config[key] = coerce(text, config[key], key)
    return config


# -- running ----------------------------------------------------------------------------
def check_lab_device(name: str, config: Dict[str, Any]) -> None:
    """A lab with a "device" setting: "cpu" or "cuda", and on "cuda" a GPU there (the clear
    error of :func:`mlcvlab.gpu.device.array_module`), before any work."""
    if "device" not in config:
        return
    from mlcvlab.gpu.device import array_module, check_device
    try:
        config["device"] = check_device(config["device"])
    except ValueError as err:
        raise ValueError(f"lab {name}: {err}") from None
    if config["device"] == "cuda":
        array_module()


def run_lab(name: str, quick: bool = False, out_dir: Optional[str] = None,
            seed: Optional[int] = None, overrides: Sequence[str] = (),
            workers: Optional[int] = None, show_progress: bool = True,
            preset: Optional[str] = None, conv_algorithm: str = "auto") -> Dict[str, Any]:
    """Run lab ``name`` with a preset; write results.json and config.json.

    ``conv_algorithm``: how the lab's 3x3 convolutions run in this process
    (``mlcvlab.nn.conv.set_algorithm``: "auto", or "fast" to also take Winograd F(4x4, 3x3),
    up to ~1.1x faster convolutional training at ~10x the float32 rounding), restored afterwards and
    recorded in config.json.

    preset: "quick", "standard" (the default) or "full"; ``quick=True`` is "quick".
    The config passed to the lab is the preset, updated by ``overrides``, with
    "seed" set (``seed`` argument, else the preset's "seed", else 0). The lab's
    run writes report.md and figures; this function writes the JSON files, adds
    ``"preset"`` and ``"comparisons"`` (default ``[]``, each entry checked against
    :func:`mlcvlab.labs.stats.check_comparison`) to the results, and opens a quick
    run's report with the smoke-test banner. Returns the results dict.
    Default out_dir: lab_runs/<name>/.
    """
    from mlcvlab.labs import report, stats
    from mlcvlab.nn import conv

    spec = get_lab(name)
    if quick and preset not in (None, "quick"):
        raise ValueError(f"lab {name}: quick=True contradicts preset={preset!r}")
    preset = "quick" if quick else (preset or DEFAULT_PRESET)
    config = apply_overrides(spec.preset(preset), overrides, name)
    config["seed"] = int(seed if seed is not None else config.get("seed", 0))
    check_lab_device(name, config)
    out = Path(out_dir) if out_dir else Path("lab_runs") / name
    report.check_out_dir(out)
    print(f"lab {name} ({preset} preset, expected {spec.expected_time(preset)}) -> {out}/")
    commit = report.git_commit()        # the code that runs: the checkout may move meanwhile
    previous = conv.set_algorithm(conv_algorithm)       # rejects an unknown name first
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        results = spec.run(config, out, report.progress_factory(show_progress))
    finally:
        conv.set_algorithm(previous)
    if not isinstance(results, dict):
        raise TypeError(f"lab {name}: run() must return a dict of results, "
                        f"got {type(results).__name__}")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    results["preset"] = preset
    results.setdefault("comparisons", [])
    for i, c in enumerate(results["comparisons"]):
        stats.check_comparison(c, where=f"lab {name}: comparisons[{i}]")
    if conv_algorithm != "auto":
        report.prepend_banner(out / "report.md", CONV_ALGORITHM_NOTE.format(
            conv_algorithm, CONV_ALGORITHM_MEANING[conv_algorithm]))
    if preset == "quick":                       # above the note: the banner comes first
        report.prepend_banner(out / "report.md", SMOKE_TEST_BANNER)
    report.write_json(out / "results.json", results)
    report.write_config(out, config, lab=name, preset=preset, workers=workers, seconds=seconds,
                        cpu_seconds=cpu_seconds, git_commit=commit,
                        conv_algorithm=conv_algorithm)
    print(f"lab {name}: done in {seconds:.1f} s ({cpu_seconds:.1f} CPU s); "
          f"report at {out / 'report.md'}")
    return results
