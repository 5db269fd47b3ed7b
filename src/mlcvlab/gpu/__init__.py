"""The GPU twins of the layers' math: ``model.to("cuda")`` runs the same model on a GPU.

A layer's CPU math lives in :mod:`mlcvlab.nn.basis` / :mod:`mlcvlab.nn.conv`; its GPU twin,
with the same name, signature and cache, in :mod:`mlcvlab.gpu.basis` / :mod:`mlcvlab.gpu.conv`.
GEMMs go through the array module (CuPy, i.e. cuBLAS, on a GPU); every other op is a numba
``@cuda.jit`` kernel working in place on the arrays (CUDA array interface). A layer picks
its twin from its ``device`` (set by :meth:`mlcvlab.nn.Module.to`).

Nothing here is imported on the CPU path. Under numba's simulator
(``NUMBA_ENABLE_CUDASIM=1``) NumPy stands in for CuPy, so the whole device path, kernels
included, runs and is tested on a machine without a GPU (see :mod:`mlcvlab.gpu.device`).
"""
