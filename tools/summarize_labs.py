#!/usr/bin/env python
"""Print, as Markdown, what lab runs measured: per lab its preset, data, time (CPU and wall)
and every comparison of its ``results.json`` as the report's own sentence (mean, difference,
95% interval, replicates, verdict). LAB_RESULTS.md's tables are made with it:

    python tools/summarize_labs.py lab_runs/        # every <folder>/<lab>/results.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mlcvlab.labs import stats  # noqa: E402


def _data_note(report: Path) -> str:
    """The report's data-substitution note, if any (its header says which data it used)."""
    if not report.exists():
        return ""
    for line in report.read_text().splitlines():
        if line.startswith("> **Note:** Data substitution"):
            return line.replace("> **Note:** ", "")
    return ""


def summarize(folder: Path) -> str:
    results = json.loads((folder / "results.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    lines = [f"### {config.get('lab', folder.name)}", ""]
    cpu, wall = config.get("cpu_seconds"), config.get("seconds")
    timing = (f"{cpu / 60:.1f} CPU min, {wall / 60:.1f} wall min" if cpu is not None
              else f"{wall / 60:.1f} wall min")
    lines.append(f"`mlcvlab lab run {config.get('lab')} --preset {results.get('preset')}` "
                 f"(seed {config.get('seed')}, commit {str(config.get('git_commit'))[:7]}): "
                 f"{timing}.")
    note = _data_note(folder / "report.md")
    lines.append("")
    lines.append(note or "Data: the study's own (no substitution).")
    comparisons = results.get("comparisons") or []
    lines.append("")
    if not comparisons:
        lines.append("No comparisons: the lab computes or checks, it does not compare arms "
                     "(see its report).")
    counts = {v: sum(c["verdict"] == v for c in comparisons) for v in stats.VERDICTS}
    if comparisons:
        lines.append(f"{len(comparisons)} comparisons: " + ", ".join(
            f"{n} {v}" for v, n in counts.items() if n) + ".")
        lines.append("")
        lines += [f"- {stats.sentence(c)}" for c in comparisons]
    return "\n".join(lines) + "\n"


def main() -> int:
    base = Path(sys.argv[1] if len(sys.argv) > 1 else "lab_runs")
    folders = sorted(p.parent for p in base.glob("*/results.json"))
    if not folders:
        print(f"no */results.json under {base}", file=sys.stderr)
        return 1
    print("\n".join(summarize(f) for f in folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
