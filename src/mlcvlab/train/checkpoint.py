"""Checkpoints without pickle: arrays in an ``.npz`` (read with ``allow_pickle=False``), the
rest as JSON, and a SHA-256 over both, checked on every load.

A training state is a tree of dicts, lists and tuples whose leaves are NumPy arrays, numbers,
strings, booleans or None (model and optimizer state, generator states, history). It is
stored as ONE file, so that a write is one atomic rename:

* every array leaf becomes an entry ``a0``, ``a1``, ... of the ``.npz``;
* the tree, with each array replaced by ``{"__array__": "a0"}`` (and tuples, non-string
  dict keys and non-finite floats tagged likewise), is JSON, stored as the uint8 entry
  ``__state__``;
* ``__sha256__`` is the SHA-256 of the JSON and of every array's name, dtype, shape and bytes.

Nothing in the file can execute code when read, and a flipped byte, a truncated file or an
edited array fails the hash (or the zip's own CRC) with an error naming the file.

:func:`save_checkpoint` keeps the last two checkpoints (``checkpoint.npz`` and
``checkpoint.prev.npz``), so one corrupt file never loses the run: :func:`load_checkpoint`
falls back to the previous one and says so.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.io import atomic_writer

FILENAME = "checkpoint.npz"
PREVIOUS = "checkpoint.prev.npz"
FORMAT = "mlcvlab-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, truncated, tampered or not mlcvlab's."""


# ----------------------------------------------------------------------------- encode/decode
def _encode(obj: Any, arrays: Dict[str, np.ndarray]) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("checkpoint: object arrays cannot be stored (they would need pickle)")
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(obj).reshape(obj.shape)   # keeps 0-d arrays 0-d
        return {"__array__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: _encode(v, arrays) for k, v in obj.items()}
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} ({obj!r:.60}); a state "
                    "holds arrays, numbers, strings, None, and dicts/lists/tuples of them")


def _decode(obj: Any, arrays: Dict[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in obj["__items__"]}
        if "__float__" in obj:
            return float(obj["__float__"])
        return {k: _decode(v, arrays) for k, v in obj.items()}
    return obj


def _hashable(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def _digest(state_json: bytes, arrays: Dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(state_json)
    for key in sorted(arrays):
        a = arrays[key]
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def encode_state(state: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """The ``.npz`` entries of ``state``: its arrays, its JSON tree and their SHA-256."""
    arrays: Dict[str, np.ndarray] = {}
    tree = {"format": FORMAT, "state": _encode(state, arrays)}
    state_json = json.dumps(tree, sort_keys=True, allow_nan=False).encode("utf-8")
    entries = dict(arrays)
    entries["__state__"] = np.frombuffer(state_json, dtype=np.uint8)
    entries["__sha256__"] = np.frombuffer(_digest(state_json, arrays).encode(), dtype=np.uint8)
    return entries


def read_state(path: str) -> Dict[str, Any]:
    """The state stored in ``path``; :class:`CheckpointError` naming the file when it is not
    a whole, unaltered mlcvlab checkpoint."""
    advice = ("resume from the previous checkpoint (checkpoint.prev.npz, used automatically "
              "when present) or train again")
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            entries = {k: z[k] for k in z.files}
    except Exception as err:  # BadZipFile, CRC error, ValueError (object arrays), EOFError
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}): "
                              f"it is truncated or corrupt; {advice}") from None
    if "__state__" not in entries or "__sha256__" not in entries:
        raise CheckpointError(f"checkpoint {path} has no __state__/__sha256__ entries: it was "
                              f"not written by mlcvlab (or by an older version); {advice}")
    state_json = entries.pop("__state__").tobytes()
    stored = entries.pop("__sha256__").tobytes().decode("ascii", "replace")
    if _digest(state_json, entries) != stored:
        raise CheckpointError(f"checkpoint {path} fails its SHA-256 check: its contents were "
                              f"altered after it was written; {advice}")
    try:
        tree = json.loads(state_json.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path}: its state is not valid JSON ({err}); "
                              f"{advice}") from None
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is of format {tree.get('format')!r} "
                              f"(expected {FORMAT!r}); {advice}")
    return _decode(tree["state"], entries)


def write_state(path: str, state: Dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (no pickle)."""
    entries = encode_state(state)
    atomic_writer(path, lambda f: np.savez(f, **entries))


# ----------------------------------------------------------------------------- run folders
def save_checkpoint(directory: str, state: Dict[str, Any]) -> str:
    """Write ``state`` as ``directory/checkpoint.npz``, keeping the one before it as
    ``checkpoint.prev.npz``. Each step is an atomic rename: a crash at any point leaves at
    least one whole checkpoint. Returns the path written."""
    os.makedirs(directory, exist_ok=True)
    path, prev = os.path.join(directory, FILENAME), os.path.join(directory, PREVIOUS)
    entries = encode_state(state)
    tmp_path = path + ".new"

    def write(f):
        np.savez(f, **entries)

    atomic_writer(tmp_path, write)
    if os.path.exists(path):
        os.replace(path, prev)
    os.replace(tmp_path, path)
    return path


def checkpoint_paths(directory: str) -> List[str]:
    """The checkpoint files of a run folder, newest first (those that exist)."""
    names = [FILENAME, PREVIOUS]
    return [os.path.join(directory, n) for n in names if os.path.exists(os.path.join(directory, n))]


def load_checkpoint(directory: str) -> Dict[str, Any]:
    """The newest whole checkpoint of ``directory``. A corrupt newest file is reported with a
    warning naming it and the previous checkpoint is used; when none is usable, a
    :class:`CheckpointError` (or FileNotFoundError) says what was wrong with each."""
    paths = checkpoint_paths(directory)
    new = os.path.join(directory, FILENAME + ".new")
    if os.path.exists(new):   # a crash between writing the new file and renaming it
        paths.insert(0, new)
    if not paths:
        raise FileNotFoundError(f"no checkpoint to resume from: {directory} has no {FILENAME} "
                                "(the run ended before its first checkpoint: start it again "
                                "without --resume)")
    problems: List[Tuple[str, str]] = []
    for path in paths:
        try:
            state = read_state(path)
        except CheckpointError as err:
            problems.append((path, str(err)))
            continue
        for key in ("model", "optimizer", "history", "epoch"):
            if key not in state:
                problems.append((path, f"checkpoint {path} has no '{key}' entry"))
                break
        else:
            for bad, why in problems:
                if not bad.endswith(".new"):
                    warnings.warn(f"{why}\nResuming from the previous checkpoint {path} instead.")
            return state
    raise CheckpointError("no usable checkpoint in " + directory + ":\n" +
                          "\n".join(f"  {why}" for _, why in problems) +
                          "\nTrain again without --resume.")
