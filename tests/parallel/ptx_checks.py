"""Compile every numba CUDA kernel of src/mlcvlab to PTX for sm_90, without a GPU.

Run by test_ptx.py as ``python ptx_checks.py OUT.json`` (a subprocess, without
NUMBA_ENABLE_CUDASIM, so that ``numba.cuda`` is the real compiler and no simulator
state leaks in). Needs ``numba-cuda`` and NVVM from PyPI: the ``test`` extra installs
``numba-cuda[cu13]`` (libnvvm, NVRTC, cuda-bindings); no driver or device is used.

Each PTX is then assembled to sm_90 machine code (SASS) with nvJitLink, which runs
ptxas inside (the cu13 extra ships it): an assembly error fails the test too, and
ptxas's register and spill counts are recorded.

Writes ``{"numba_cuda": version, "kernels": {key: {"ok": bool, "error": str,
"f64": [instructions], "ptx_lines": int, "sass": {"ok", "registers", "spill_stores",
"error"}}}}`` for every (kernel, signature) of signatures(), and lists under
``"unsigned"`` every kernel found in the sources that signatures() does not cover (a
new kernel must get a signature here).
"""
from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import sys
import traceback

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)

CC = (9, 0)          # sm_90 (H100/H200); any current architecture gives the same f64 verdict

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"


def signatures():
    """{module: {kernel: [argument types, ...]}}: the types mlcvlab.parallel.cuda launches
    each kernel with (C-contiguous float32 device arrays, np.float32 scalars, bool flags,
    int64 labels, the uint32/uint64 words of the dropout mask's Philox key;
    cudasim_checks.launch_arguments_are_float32 checks the launches), and the types
    mlcvlab.gpu.conv launches its kernels with (Python ints as int64, the uint8 argmax of
    windows up to 16x16)."""
    from numba import boolean, float32, int64, uint8, uint32, uint64
    f1, f2, f3 = float32[::1], float32[:, ::1], float32[:, :, ::1]
    i1, u = int64[::1], uint64
    f4, i = float32[:, :, :, ::1], int64
    return {"mlcvlab.gpu.conv_kernels": {
        "im2col_kernel": [(f4, f2, i, i, i, i, i, i, i, i)],
        "col2im_kernel": [(f2, i, i, i, i, i, i, i, i, f4)],
        "cols_to_nchw_kernel": [(f2, f4)],
        "cols_to_nchw_bias_kernel": [(f2, f1, f4)],
        "nchw_to_cols_kernel": [(f4, f2)],
        "row_sums_kernel": [(f2, i, f1)],
        "spread_kernel": [(f1, i, f2)],
        "maxpool_kernel": [(f4, i, i, i, i, i, i, f4, uint8[:, :, :, ::1])],
        "maxpool_grad_kernel": [(f4, uint8[:, :, :, ::1], i, i, i, i, i, i, f4)],
        "avgpool_kernel": [(f4, i, i, i, i, i, i, float32, f4)],
        "avgpool_grad_kernel": [(f4, i, i, i, i, i, i, float32, f4)],
    }, "mlcvlab.parallel.cuda_kernels": {
        "matmul_kernel": [(f2, f2, f2, boolean, boolean)],
        "add_bias_kernel": [(f2, f1)],
        "relu_kernel": [(f1, f1)],
        "relu_grad_kernel": [(f1, f1, f1)],
        "sigmoid_kernel": [(f1, f1)],
        "sigmoid_grad_kernel": [(f1, f1, f1)],
        "mask_kernel": [(f1, f1, f1)],
        # mask, keep threshold, 1/(1-p), key words (k0, k1, stream, step_lo, step_hi)
        "dropout_mask_kernel": [(f1, uint32, float32, u, u, u, u, u)],
        "colsum_kernel": [(f2, f1)],
        "bn_forward_kernel": [(f2, f1, f1, float32, f2, f2, f1, f1, f1)],
        "bn_backward_kernel": [(f2, f2, f1, f1, f2, f1, f1)],
        "softmax_kernel": [(f2, f2)],
        # int labels (softmax head) and float targets (C = 1, sigmoid head)
        "prob_minus_target_kernel": [(f2, i1, f2), (f2, f1, f2)],
        "reduce_mean_kernel": [(f2, f1)],
        "sgd_update_kernel": [(f1, f1, f1, float32, float32, float32, boolean)],
    }, "mlcvlab.gpu.basis_kernels": {
        # the GPU twins of mlcvlab.gpu.basis / losses / optim: flat (S,) views, (N, C, L)
        # batch norm, int64 labels
        "relu_forward_kernel": [(f1, f1)],
        "relu_backward_kernel": [(f1, f1, f1)],
        "leaky_relu_kernel": [(f1, float32, f1)],
        "leaky_relu_grad_kernel": [(f1, f1, float32, f1)],
        "sigmoid_stable_kernel": [(f1, f1)],
        "tanh_kernel": [(f1, f1)],
        "tanh_grad_kernel": [(f1, f1, f1)],
        "keep_mask_kernel": [(f1, float32, f1)],
        "softmax_grad_rows_kernel": [(f2, f2, f2)],
        "bn_channels_forward_kernel": [(f3, f1, f1, float32, f3, f3, f1, f1, f1)],
        "bn_channels_backward_kernel": [(f3, f3, f1, f1, f3, f1, f1)],
        "bn_eval_kernel": [(f3, f1, f1, f1, f1, float32, f3)],
        "bn_running_kernel": [(f1, f1, f1, f1, float32, float32, float32)],
        "ce_rows_kernel": [(f2, i1, int64, f2, f1, f1)],
        "ce_reduce_kernel": [(f1, f1, boolean, f1, f1)],
        "ce_grad_kernel": [(f2, i1, f1, f1)],
        # the fused updates: scalars, then wd, the decay mask's vector and "masked"
        "adam_kernel": [(f1, f1, f1, f1) + (float32,) * 9 + (f1, boolean)],
        "adagrad_kernel": [(f1, f1, f1, float32, float32, float32, f1, boolean)],
        "sgd_kernel": [(f1, f1, f1, float32, float32, float32, f1, boolean, boolean)],
        "rmsprop_kernel": [(f1,) * 5 + (float32,) * 7 + (f1, boolean, boolean, boolean)],
        "adadelta_kernel": [(f1,) * 4 + (float32,) * 5 + (f1, boolean)],
    }}


def sig_key(name, sig) -> str:
    return f"{name}({', '.join(str(t) for t in sig)})"


def all_keys():
    return [sig_key(name, sig) for table in signatures().values()
            for name, sigs in table.items() for sig in sigs]


def kernel_modules():
    """Every module under src/mlcvlab whose source has a ``cuda.jit``."""
    mods = []
    for path in sorted((SRC / "mlcvlab").rglob("*.py")):
        if "cuda.jit" in path.read_text():
            rel = path.relative_to(SRC).with_suffix("")
            mods.append(".".join(rel.parts))
    return mods


def find_kernels(module):
    """{name: dispatcher} of the module's @cuda.jit kernels (device functions left out:
    they are compiled through the kernels that call them)."""
    from numba.cuda.dispatcher import CUDADispatcher
    return {name: obj for name, obj in vars(module).items()
            if isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device")
            and obj.py_func.__module__ == module.__name__}


F64 = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*\.f64[\w.]*)", re.M)


def f64_instructions(ptx: str):
    """The PTX instructions that touch float64 (``add.f64``, ``cvt.f64.f32``,
    ``cvt.rn.f32.f64``, ``sqrt.rn.f64``, ``ld.param.f64``...); register declarations
    (``.reg .f64``) are not instructions and are not counted."""
    return F64.findall(ptx)


def assemble(ptx: str) -> dict:
    """ptxas through nvJitLink: PTX -> sm_90 cubin, with the register and spill counts."""
    from cuda.bindings import nvjitlink as nj
    opts = [f"-arch=sm_{CC[0]}{CC[1]}", "-verbose"]
    handle = nj.create(len(opts), opts)
    try:
        data = ptx.encode()
        try:
            nj.add_data(handle, nj.InputType.PTX, data, len(data), "kernel.ptx")
            nj.complete(handle)
        except Exception as err:  # noqa: BLE001 - the error log is the finding
            size = nj.get_error_log_size(handle)
            log = bytearray(size)
            if size:
                nj.get_error_log(handle, log)
            return {"ok": False, "registers": None, "spill_stores": None,
                    "error": f"{err}\n{log.decode(errors='replace')}"[-2000:]}
        size = nj.get_info_log_size(handle)
        log = bytearray(size)
        if size:
            nj.get_info_log(handle, log)
        text = log.decode(errors="replace")
        regs = re.search(r"Used (\d+) registers", text)
        spills = re.search(r"(\d+) bytes spill stores", text)
        return {"ok": nj.get_linked_cubin_size(handle) > 0, "error": "",
                "registers": int(regs.group(1)) if regs else None,
                "spill_stores": int(spills.group(1)) if spills else None}
    finally:
        nj.destroy(handle)


class _Device:
    """Stands in for the current device: numba-cuda compiles a kernel's device
    functions for get_current_device().compute_capability, which needs a driver."""
    compute_capability = CC
    id = 0
    name = b"sm_90 (no device: PTX only)"


def main(out: str) -> None:
    import numba
    from numba import cuda
    import numba.cuda.dispatcher as disp
    if getattr(cuda, "_simulator", False) or "simulator" in cuda.__name__:
        raise RuntimeError("numba.cuda is the simulator; unset NUMBA_ENABLE_CUDASIM")
    disp.get_current_device = lambda: _Device()
    try:
        import numba_cuda
        version = getattr(numba_cuda, "__version__", "?")
    except ImportError:
        version = None
    sys.path.insert(0, str(SRC))
    sigs = signatures()
    result = {"numba": numba.__version__, "numba_cuda": version, "cc": list(CC),
              "kernels": {}, "unsigned": []}
    for modname in kernel_modules():
        mod = importlib.import_module(modname)
        table = sigs.get(modname, {})
        for name, kern in find_kernels(mod).items():
            if name not in table:
                result["unsigned"].append(f"{modname}.{name}")
                continue
            for sig in table[name]:
                key = sig_key(name, sig)
                try:
                    ptx, _ = cuda.compile_ptx(kern.py_func, sig, cc=CC)
                    result["kernels"][key] = {"ok": True, "error": "",
                                              "f64": f64_instructions(ptx),
                                              "ptx_lines": ptx.count("\n"),
                                              "sass": assemble(ptx)}
                except Exception:  # noqa: BLE001 - a compile error is the test's finding
                    result["kernels"][key] = {"ok": False, "f64": [], "ptx_lines": 0,
                                              "error": traceback.format_exc()[-2000:],
                                              "sass": None}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
