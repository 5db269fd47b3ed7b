"""mlcvlab: a deep-learning library from scratch on NumPy, and labs that rerun the
classic studies of efficient learning.

Threads: every kernel (BLAS and mlcvlab's own, which follow the BLAS limit) uses
:func:`set_num_threads`'s count. ``MLCVLAB_THREADS=N`` in the environment sets it when
mlcvlab is imported (the ``mlcvlab`` command defaults to 1: on a small, shared machine a
second BLAS thread was measured to slow the handout-scale GEMMs down, up to 100x when it
competes with MPI ranks or the loader thread).
"""
import os as _os

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Limit BLAS (and so mlcvlab's own kernels) to ``n`` threads in this process, for
    everything that runs afterwards (``threadpoolctl.threadpool_limits`` as a context
    manager limits one block instead)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be an integer >= 1, got {n!r}")
    import numpy  # noqa: F401 - load the BLAS first: threadpoolctl limits loaded libraries
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)


def get_num_threads() -> int:
    """The BLAS thread limit in force (what mlcvlab's kernels use)."""
    from mlcvlab.nn.kernels import num_threads

    return num_threads()


if _os.environ.get("MLCVLAB_THREADS"):
    try:
        _n = int(_os.environ["MLCVLAB_THREADS"])
    except ValueError:
        raise ValueError("MLCVLAB_THREADS must be a positive integer, got "
                         f"{_os.environ['MLCVLAB_THREADS']!r}") from None
    set_num_threads(_n)
