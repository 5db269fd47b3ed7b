"""Training and evaluation throughput of mlcvlab vs PyTorch (CPU): MLP, LeNet-5, ResNet-20.

The same measurement as ``mlcvlab bench`` (see ``src/mlcvlab/bench.py`` for the
method): both frameworks in one process, the same batch, the same thread count,
timed interleaved, medians over repeats; SGEMM peak and the MLP's fraction of
it; peak step memory in fresh subprocesses.

Run:  python benchmarks/bench_models.py [--models mlp,lenet5,resnet20] [--batch-size 128]
                                        [--threads 2] [--repeats 5] [--quick] [--out FILE]
"""
from __future__ import annotations

import sys

from mlcvlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))
