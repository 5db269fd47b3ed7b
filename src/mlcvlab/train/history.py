"""Per-epoch training records, saved as JSON and CSV and drawn as curves."""
from __future__ import annotations

import csv
import json
import math
from typing import Any, Dict, List, Optional

from mlcvlab.io import atomic_write_text, atomic_writer

# the columns of DESIGN.md's history.json, in this order; extra keys follow
CORE_KEYS = ["epoch", "train_loss", "val_loss", "val_acc", "seconds", "lr", "batch_size"]


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class History:
    """A list of per-epoch records (dicts): epoch, train_loss, val_loss, val_acc,
    seconds, lr, batch_size, plus whatever else the trainer measured (train_acc,
    compute/communication/update seconds, ...).

    ``seconds`` is the wall-clock time of the epoch's training steps; the Trainer also records
    ``cpu_seconds``, the CPU time of the whole process (all its threads) over the same steps.
    On a machine shared with other jobs, wall seconds well above the CPU seconds of a
    one-thread run mean the process waited for a core.
    """

    def __init__(self, records: Optional[List[Dict[str, Any]]] = None):
        self.records: List[Dict[str, Any]] = list(records or [])

    def append(self, record: Dict[str, Any]) -> None:
        self.records.append({k: _clean(v) for k, v in record.items()})

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __iter__(self):
        return iter(self.records)

    def __repr__(self) -> str:
        if not self.records:
            return "History(0 epochs)"
        last = self.records[-1]
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("train_loss", "train_acc", "val_loss",
                                                           "val_acc")
                          if isinstance(last.get(k), (int, float)))
        return f"History({len(self)} epochs; last: {shown})"

    def table(self, keys: Optional[List[str]] = None) -> str:
        """A plain-text table of the records (numbers to 4 significant digits), e.g. to print
        in a notebook; ``keys`` defaults to the losses and accuracies."""
        keys = keys or [k for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                    "seconds", "cpu_seconds", "lr")
                        if any(r.get(k) is not None for r in self.records)]
        cells = [[("" if r.get(k) is None else f"{r[k]:.4g}" if isinstance(r.get(k), float)
                   else str(r[k])) for k in keys] for r in self.records]
        widths = [max([len(k)] + [len(c[i]) for c in cells]) for i, k in enumerate(keys)]
        lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:      # Jupyter shows the table
        return "<pre>" + repr(self) + "\n\n" + self.table() + "</pre>"

    def column(self, key: str) -> List[Any]:
        return [r.get(key) for r in self.records]

    def keys(self) -> List[str]:
        keys = [k for k in CORE_KEYS if any(k in r for r in self.records)]
        for r in self.records:
            keys += [k for k in r if k not in keys]
        return keys

    def to_json(self, path: str) -> None:
        atomic_write_text(path, json.dumps(self.records, indent=2))

    @classmethod
    def from_json(cls, path: str) -> "History":
        with open(path) as f:
            return cls(json.load(f))

    def to_csv(self, path: str) -> None:
        import io
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.keys())
        writer.writeheader()
        for r in self.records:
            writer.writerow(r)
        atomic_write_text(path, buf.getvalue())

    def plot(self, path: Optional[str] = None, title: str = "", ax=None):
        """Loss (train and validation) and accuracy (train and validation) per epoch.

        Returns the matplotlib Figure. With ``path``, also writes it as a PNG (atomically).
        With ``ax`` (a pair of Axes, or one Axes for the loss alone), draws there. It never
        changes matplotlib's backend: a notebook's ``plt.show()`` keeps working, and a
        returned Figure displays itself in Jupyter.
        """
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        if ax is None:
            fig = Figure(figsize=(10, 4))
            ax1, ax2 = fig.subplots(1, 2)
        elif isinstance(ax, (list, tuple)):
            ax1, ax2 = ax
            fig = ax1.figure
        else:
            ax1, ax2, fig = ax, None, ax.figure
        epochs = self.column("epoch")
        for a in (ax1, ax2):
            if a is not None:
                a.xaxis.set_major_locator(MaxNLocator(integer=True))
                a.set_xlabel("epoch")
        ax1.plot(epochs, self.column("train_loss"), marker="o", label="train")
        if any(v is not None for v in self.column("val_loss")):
            ax1.plot(epochs, self.column("val_loss"), marker="o", label="validation")
        ax1.set_ylabel("loss")
        ax1.set_title("loss per epoch")
        ax1.legend()
        if ax2 is not None:
            for key, label in (("train_acc", "train"), ("val_acc", "validation")):
                if any(v is not None for v in self.column(key)):
                    ax2.plot(epochs, self.column(key), marker="o", label=label)
            ax2.set_ylabel("accuracy (fraction correct)")
            ax2.set_title("accuracy per epoch")
            if ax2.lines:
                ax2.legend()
        if title:
            fig.suptitle(title)
        if ax is None:
            fig.tight_layout()
        if path is not None:
            atomic_writer(path, lambda f: fig.savefig(f, dpi=100, format="png"))
        return fig
