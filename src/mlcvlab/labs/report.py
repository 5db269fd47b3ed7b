"""The report toolkit of the labs: report.md, tables (Markdown + CSV), figures (PNG), JSON.

A report states only numbers its own run computed. :class:`Report` is bound
to the lab's ``results`` dict and every sentence is a template filled from it
(``report.text("Total: {total:,} parameters.")``): a template naming a key that
is not in the results raises, so the report cannot drift from results.json.
``report.used_keys`` lists the result keys the report used.

Data substitution (LABS.md): when a lab runs on a stand-in for a dataset that
is not on disk, call ``report.note_substitution(...)``: it prints the note and
puts it in the report header.
"""
from __future__ import annotations

import csv
import json
import string
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np


# -- clocks -------------------------------------------------------------------------------------
def timing_clock(config: Dict[str, Any]) -> str:
    """The clock a lab's time comparisons are read on: "cpu" (the process's CPU seconds, which
    do not grow while it waits for a core on a shared machine) on the CPU; "wall" on a
    ``device`` "cuda" run, where the work is the device's and the CPU seconds are only the
    host's share (launching kernels, waiting): its wall seconds are device time, since the
    Trainer reads every step's loss (one synchronisation per step)."""
    return "wall" if config.get("device", "cpu") == "cuda" else "cpu"


# -- JSON ---------------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, Paths and dataclass-like objects to JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return to_jsonable(float(obj))
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)          # JSON has no NaN/inf
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "__dict__"):
        return to_jsonable(vars(obj))
    return str(obj)


def write_json(path, obj: Any) -> Path:
    """``obj`` as indented JSON, written atomically."""
    from mlcvlab.io import atomic_write_text

    path = Path(path)
    atomic_write_text(str(path), json.dumps(to_jsonable(obj), indent=2) + "\n")
    return path


def check_out_dir(out) -> Path:
    """Create the output folder and test-write it, so a bad ``--out`` fails before any work."""
    from mlcvlab.io import check_writable_dir

    return Path(check_writable_dir(str(out), what="lab output folder (--out)"))


def prepend_banner(report_path, banner: str) -> None:
    """Put ``banner`` right under the report's title (the quick preset's smoke-test banner)."""
    from mlcvlab.io import atomic_write_text

    path = Path(report_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: the lab wrote no report.md (call Report.write())")
    lines = path.read_text().split("\n")
    at = 1 if lines and lines[0].startswith("# ") else 0
    lines[at:at] = ["", banner]
    atomic_write_text(str(path), "\n".join(lines))


def git_commit() -> Optional[str]:
    """The mlcvlab checkout's commit hash, or None (no git, not a checkout, any error)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def write_config(out_dir, config: Dict[str, Any], workers: Optional[int] = None, **extra) -> Path:
    """config.json: the config (with its seed), array module, numpy version, workers, git commit
    (``git_commit=`` in ``extra``: the one read when the run started; else read now)."""
    from mlcvlab import backend

    commit = extra.pop("git_commit") if "git_commit" in extra else git_commit()
    record = {"config": config, "seed": config.get("seed"),
              "array_module": backend.get_array_module().__name__, "numpy": np.__version__,
              "python": sys.version.split()[0], "git_commit": commit, **extra}
    if workers is not None:
        record["workers"] = workers
    return write_json(Path(out_dir) / "config.json", record)


# -- progress -------------------------------------------------------------------------------------
def progress_factory(enabled: bool = True) -> Callable:
    """A ``progress(iterable, desc="", total=None)`` wrapper: a tqdm bar, or the bare iterable."""

    from mlcvlab.train.callbacks import interactive

    def progress(iterable: Iterable, desc: str = "", total: Optional[int] = None):
        if not enabled or not interactive():     # no \r bars in logs and pipes
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)

    return progress


# -- tables and figures -----------------------------------------------------------------------
def _cell(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def markdown_table(rows: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
    """A Markdown table of dict rows (ints with thousands separators, floats to 6 digits)."""
    if not rows:
        raise ValueError("markdown_table: got no rows")
    columns = list(columns or rows[0].keys())
    numeric = [all(isinstance(r.get(c), (int, float, np.number)) for r in rows) for c in columns]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path, rows: Sequence[Dict[str, Any]],
              columns: Optional[Sequence[str]] = None) -> Path:
    path = Path(path)
    columns = list(columns or rows[0].keys())
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: to_jsonable(r.get(c, "")) for c in columns})
    return path


def new_figure(**kwargs):
    """(fig, ax) from matplotlib with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)


class Report:
    """Builds report.md in ``out_dir`` from the lab's ``results`` dict.

    Sections: title, header notes (e.g. data substitution), setup, then tables,
    figures and text in the order added; ``write()`` saves report.md.
    """

    def __init__(self, out_dir, title: str, results: Dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.results = results
        self.notes: List[str] = []
        self.blocks: List[str] = []
        self.used_keys: set = set()

    # -- text from results ------------------------------------------------------------------
    def fmt(self, template: str) -> str:
        """``template.format(**results)``, recording which result keys it used."""
        keys = {name.split(".")[0].split("[")[0]
                for _, name, _, _ in string.Formatter().parse(template) if name}
        missing = sorted(k for k in keys if k not in self.results)
        if missing:
            raise KeyError(f"Report.fmt: template uses {missing}, not in the results dict "
                           f"(keys: {sorted(self.results)}); put the number in results first")
        self.used_keys |= keys
        return template.format(**self.results)

    def text(self, template: str) -> None:
        """A paragraph formatted from the results."""
        self.blocks.append(self.fmt(template))

    def section(self, heading: str) -> None:
        self.blocks.append(f"## {heading}")

    def bullets(self, templates: Sequence[str]) -> None:
        self.blocks.append("\n".join(f"- {self.fmt(t)}" for t in templates))

    # -- header -------------------------------------------------------------------------------
    def note(self, message: str) -> None:
        """A note shown in the report header and printed on the console now."""
        print(f"note: {message}")
        self.notes.append(message)

    def note_substitution(self, wanted: str, used: str, reason: str = "not found on disk") -> None:
        """Record that dataset ``wanted`` was replaced by ``used`` (LABS.md data rule)."""
        self.note(f"Data substitution: {wanted} was {reason}; this run used {used} instead. "
                  f"Numbers are for {used}, not {wanted}.")

    def setup(self, config: Dict[str, Any]) -> None:
        """The setup section: every config key and value; with ``device`` "cuda", where the
        numbers come from (the GPU, or numba's simulator, whose times are not a GPU's: a
        simulator run must never read as a GPU run) and what its CPU seconds are."""
        lines = [f"- `{k}` = `{v}`" for k, v in config.items()]
        self.blocks.append("## Setup\n\n" + "\n".join(lines))
        if config.get("device") == "cuda":
            from mlcvlab.gpu.device import describe
            self.blocks.append(
                f"**Device: cuda**, on {describe('cuda')}. The CPU seconds in this report are "
                "the host's share (launching kernels, waiting for the device), not the "
                "training's cost.")

    # -- tables and figures --------------------------------------------------------------------
    def table(self, name: str, rows: Sequence[Dict[str, Any]], caption: str = "",
              columns: Optional[Sequence[str]] = None) -> None:
        """Add a Markdown table and write it to <name>.csv."""
        write_csv(self.out_dir / f"{name}.csv", rows, columns)
        head = f"**{self.fmt(caption)}** " if caption else ""
        self.blocks.append(f"{head}(`{name}.csv`)\n\n{markdown_table(rows, columns)}")

    def figure(self, name: str, fig, caption: str = "") -> Path:
        """Save ``fig`` as <name>.png (then close it) and embed it."""
        import matplotlib.pyplot as plt

        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.blocks.append(f"![{name}]({name}.png)\n\n*{self.fmt(caption) if caption else name}*")
        return path

    def image(self, name: str, caption: str = "") -> None:
        """Embed an already written <name>.png."""
        self.blocks.append(f"![{name}]({name}.png)\n\n*{self.fmt(caption) if caption else name}*")

    def comparisons(self, comparisons: Sequence[Dict[str, Any]], heading: str = "Comparisons",
                    digits: int = 3) -> None:
        """A section with one sentence per comparison of :mod:`mlcvlab.labs.stats`, each
        sentence written by ``stats.sentence`` from the comparison's own numbers and verdict.
        Put the same dicts in ``results["comparisons"]``."""
        from mlcvlab.labs import stats

        if not comparisons:
            return
        lines = [f"- {stats.sentence(c, digits)}" for c in comparisons]
        self.blocks.append(f"## {heading}\n\n" + "\n".join(lines))

    def explanation(self, text: str) -> None:
        """The study's own explanation of *why* (not computed from this run), labelled so."""
        self.blocks.append(f"*The study's explanation (not a finding of this run):* {text}")

    def conclusions(self, templates: Sequence[str]) -> None:
        self.blocks.append("## Conclusions\n\n" + "\n".join(f"- {self.fmt(t)}" for t in templates))

    def write(self) -> Path:
        parts = [f"# {self.title}"]
        parts += [f"> **Note:** {n}" for n in self.notes]
        parts += self.blocks
        path = self.out_dir / "report.md"
        from mlcvlab.io import atomic_write_text

        atomic_write_text(str(path), "\n\n".join(parts) + "\n")
        return path
