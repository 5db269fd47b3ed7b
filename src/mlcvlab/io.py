"""Atomic file writes: a crash never leaves a half-written file under the final name."""
from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any, Dict

import numpy as np


def _atomic(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path: str, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_save_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    _atomic(path, lambda f: np.savez(f, **arrays))


def atomic_pickle(path: str, obj: Any) -> None:
    _atomic(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_npz(path: str) -> Dict[str, np.ndarray]:
    """All arrays of an .npz file; a clear error when it is missing or corrupt."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as err:  # zipfile.BadZipFile, ValueError, OSError, EOFError
        raise ValueError(f"{path} is not a readable .npz file ({err}); it may be truncated or "
                         "corrupt: delete it and write it again") from err
