"""Checksummed, atomic, fail-fast downloads.

A file is streamed into a temporary file in the destination folder, its size and MD5 are
checked, and only then is it renamed to its final name with ``os.replace`` (atomic on POSIX
and Windows). A partial or wrong download therefore never stays under the final name.

Without network the attempt fails within a few seconds: host names are resolved with a
deadline (``socket`` timeouts do not cover DNS) and sockets get a short timeout.
Set ``MLCVLAB_OFFLINE=1`` to skip downloads altogether.
"""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

CONNECT_TIMEOUT = 5.0   # seconds for DNS, connect and each read
_CHUNK = 1 << 20


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file (md5 for the official dataset checksums, or sha256)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def offline() -> bool:
    """True when ``MLCVLAB_OFFLINE`` is set to a non-empty value other than 0."""
    return os.environ.get("MLCVLAB_OFFLINE", "") not in ("", "0")


def _host_resolves(url: str, timeout: float) -> bool:
    """Resolve the URL's host in a daemon thread, giving up after ``timeout`` seconds."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.getproxies().get(parts.scheme):
        return True  # the proxy resolves names, not us
    result = []

    def resolve():
        try:
            socket.getaddrinfo(parts.hostname, parts.port or 443)
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def _stream(url: str, handle, timeout: float) -> None:
    """Copy ``url`` into ``handle`` with a progress bar (on a terminal or in Jupyter)."""
    from mlcvlab.train.callbacks import interactive

    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = response.headers.get("Content-Length")
        bar = None
        if interactive():
            from tqdm.auto import tqdm
            bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                       desc=url.rsplit("/", 1)[-1], leave=False)
        try:
            for block in iter(lambda: response.read(_CHUNK), b""):
                handle.write(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()


def download(urls: Sequence[str], dest: Path, md5: Optional[str] = None,
             size: Optional[int] = None, timeout: float = CONNECT_TIMEOUT) -> Path:
    """Fetch the first URL that works into ``dest``, verified by ``size`` and ``md5``.

    Raises ``OSError`` with one line per URL tried when every URL fails (no network, HTTP
    error, wrong size or checksum). ``dest``'s folder is created once a host answers.
    """
    if offline():
        raise OSError("downloads disabled (MLCVLAB_OFFLINE is set)")
    dest = Path(dest)
    failures = []
    for url in urls:
        if not _host_resolves(url, timeout):
            failures.append(f"{url}: host not reachable (no network?)")
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                _stream(url, handle, timeout)
            _check(tmp, size, md5)
            os.replace(tmp, dest)
            return dest
        except (OSError, ValueError, urllib.error.URLError) as err:
            failures.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError("download failed:\n  " + "\n  ".join(failures))


def _check(path: Path, size: Optional[int], md5: Optional[str]) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ValueError(f"got {actual_size} bytes, expected {size}")
    if md5 is not None:
        actual = file_digest(path, "md5")
        if actual != md5:
            raise ValueError(f"md5 {actual}, expected {md5}")
