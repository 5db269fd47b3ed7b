"""Atomic file writes: a crash never leaves a half-written file under the final name.

Every file mlcvlab writes goes through :func:`_atomic`: the bytes go to a fresh temporary in
the same folder (a unique name, created with ``O_CREAT | O_EXCL`` so it never follows or
reuses a planted file or symlink), are flushed to disk, and the temporary is renamed over
the final name. Files get the mode a plain ``open(..., "w")`` would give (0666 less the
process umask: 0644 by default), so a teaching assistant can read a student's run.
A crash can leave a temporary behind (``.tmp-<pid>-<random>-<name>``);
:func:`remove_orphan_temporaries` deletes those of dead processes on the next start.
"""
from __future__ import annotations

import errno
import os
import secrets
import zipfile
from typing import Dict

import numpy as np

TMP_PREFIX = ".tmp-"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _create_exclusive(directory: str, basename: str):
    """A new temporary file in ``directory`` opened for binary writing, and its path."""
    mode = _umask_mode()
    for _ in range(100):
        tmp = os.path.join(directory,
                           f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{basename}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                         mode)
        except FileExistsError:
            continue
        return os.fdopen(fd, "wb"), tmp
    raise OSError(errno.EEXIST, f"could not create a unique temporary file in {directory}")


def _atomic(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    f, tmp = _create_exclusive(directory, os.path.basename(path))
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on the disk while writing {path}; "
                          "free some space and run again (the previous version of the file, "
                          "if any, is intact)") from err
        raise


def atomic_write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path: str, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def write_npz(f, arrays: Dict[str, np.ndarray]) -> None:
    """An ``.npz`` (readable by ``np.load``) of ``arrays`` into the binary file ``f``, byte for
    byte the same for the same arrays: entries in the given order, a fixed timestamp (np.savez
    stamps the current time, so two saves of one model differ)."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)


def atomic_save_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` at ``path`` atomically and reproducibly (see write_npz)."""
    _atomic(path, lambda f: write_npz(f, arrays))


def atomic_writer(path: str, write) -> None:
    """Write ``path`` atomically with ``write(binary_file)``, e.g. a figure's ``savefig``."""
    _atomic(path, write)


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


def check_writable_dir(path: str, what: str = "output folder") -> str:
    """Create folder ``path`` (and its parents) and test-write a file in it, so that a bad
    output folder (a file, read-only, a full disk) fails now, naming the folder, instead of
    after the first epoch. Returns the path."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path!r} is a file, not a folder: "
                                 "pass a folder path (it is created if missing)")
    try:
        os.makedirs(path, exist_ok=True)
        atomic_write_bytes(os.path.join(path, ".mlcvlab-write-test"), b"ok\n" * 2048)
        os.unlink(os.path.join(path, ".mlcvlab-write-test"))
    except OSError as err:
        reason = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
                  errno.ENOSPC: "no space left on the disk",
                  errno.ENOTDIR: "a part of the path is a file"}.get(err.errno, str(err))
        raise OSError(err.errno, f"cannot write to the {what} {path!r}: {reason}; choose "
                      "another folder or free the disk") from None
    return path


def remove_orphan_temporaries(directory: str) -> int:
    """Delete the temporaries that crashed writes of *dead* processes left in ``directory``;
    returns how many. A temporary of a live process (another writer) is left alone."""
    if not os.path.isdir(directory):
        return 0
    removed = 0
    for name in os.listdir(directory):
        if not name.startswith(TMP_PREFIX):
            continue
        pid_text = name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _alive(int(pid_text)):
            continue
        if pid_text.isdigit() and int(pid_text) == os.getpid():
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
