"""Shared test set-up.

BLAS and torch run single-threaded in tests: on a 2-core machine, OpenBLAS
threads competing with torch's OpenMP threads or with the MPI ranks the tests
launch make small GEMMs up to 100x slower. Subprocesses inherit the limit
through the environment. Every test starts from the same library seed.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from mlcvlab import backend  # noqa: E402

threadpool_limits(1)
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # torch is a test dependency; the parity tests import it and fail loudly
    pass


@pytest.fixture(autouse=True)
def _seed():
    backend.seed(1234)
    backend.set_default_dtype(np.float32)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
