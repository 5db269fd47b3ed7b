"""Per-epoch training records, saved as JSON and CSV and drawn as curves."""
from __future__ import annotations

import csv
import json
import math
import os
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

    def plot(self, path: str, title: str = "") -> None:
        """Loss (train and validation) and validation accuracy per epoch, as a PNG."""
        # a bare Figure, not pyplot: saving it switches no backend, so a notebook's plt.show()
        # keeps working after a run writes its curves
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        epochs = self.column("epoch")
        fig = Figure(figsize=(10, 4))
        ax1, ax2 = fig.subplots(1, 2)
        for ax in (ax1, ax2):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax1.plot(epochs, self.column("train_loss"), marker="o", label="train")
        if any(v is not None for v in self.column("val_loss")):
            ax1.plot(epochs, self.column("val_loss"), marker="o", label="validation")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("loss")
        ax1.legend()
        for key, label in (("train_acc", "train"), ("val_acc", "validation")):
            if any(v is not None for v in self.column(key)):
                ax2.plot(epochs, self.column(key), marker="o", label=label)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("accuracy")
        if ax2.lines:
            ax2.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        atomic_writer(path, lambda f: fig.savefig(f, dpi=100, format="png"))
