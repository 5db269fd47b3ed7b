"""Every numba CUDA kernel compiles to sm_90 PTX and assembles to sm_90 machine code
(ptxas, through nvJitLink), and no float32 kernel has a float64 instruction. No GPU
needed: numba-cuda, NVVM and nvJitLink come from PyPI (the ``test`` extra's
``numba-cuda[cu13]``); the compile runs in a subprocess (ptx_checks.py) so that the
simulator, if another test turned it on, does not stand in for the compiler.

A float literal (``0.0``) or an int64 count in float32 arithmetic types as float64
on the device; on an H100/H200 float64 runs at half rate, on consumer GPUs at 1/32-1/64.
The simulator cannot see this, nor a kernel that does not compile.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ptx_checks  # noqa: E402

INSTALL = ('the PTX check needs numba-cuda and NVVM: pip install -e ".[test]" '
           '(or pip install "numba-cuda[cu13]")')
KERNELS = ptx_checks.all_keys()
_names = [k.split("(")[0] for k in KERNELS]
IDS = [n if _names.count(n) == 1 else f"{n}-{_names[:i].count(n)}" for i, n in enumerate(_names)]


@pytest.fixture(scope="module")
def ptx_results(tmp_path_factory):
    assert importlib.util.find_spec("numba_cuda") is not None, INSTALL
    out = tmp_path_factory.mktemp("ptx") / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "ptx_checks.py"), str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stderr[-3000:] + "\n" + INSTALL)
    return json.loads(out.read_text())


def test_every_kernel_has_a_signature(ptx_results):
    assert ptx_results["unsigned"] == [], (
        f"kernels without a signature in tests/parallel/ptx_checks.py: "
        f"{ptx_results['unsigned']}")
    assert len(ptx_results["kernels"]) == len(KERNELS)


@pytest.mark.parametrize("key", KERNELS, ids=IDS)
def test_kernel_compiles_to_float32_ptx(ptx_results, key):
    assert key in ptx_results["kernels"], f"{key} was not compiled (not found in the sources?)"
    res = ptx_results["kernels"][key]
    assert res["ok"], f"{key} does not compile for sm_90:\n{res['error']}"
    assert res["f64"] == [], (f"{key}: {len(res['f64'])} float64 instructions in a float32 "
                              f"kernel: {sorted(set(res['f64']))}")
    assert res["sass"]["ok"], f"{key}: ptxas (nvJitLink) rejects the PTX:\n{res['sass']['error']}"


def test_f64_instruction_scan():
    ptx = ("\t.reg .f64 \t%fd<3>;\n\tcvt.f64.f32 \t%fd1, %f1;\n\tadd.f64 \t%fd2, %fd1, %fd1;\n"
           "\t@%p1 bra \t$L__BB0_2;\n\tfma.rn.f32 \t%f3, %f1, %f2, %f3;\n"
           "\t@!%p2 sqrt.rn.f64 \t%fd2, %fd2;\n\tcvt.rn.f32.f64 \t%f4, %fd2;\n")
    assert ptx_checks.f64_instructions(ptx) == ["cvt.f64.f32", "add.f64", "sqrt.rn.f64",
                                                "cvt.rn.f32.f64"]


def test_assembler_reports_bad_ptx():
    assert importlib.util.find_spec("cuda.bindings") is not None, INSTALL
    good = ptx_checks.assemble(".version 8.0\n.target sm_90\n.address_size 64\n"
                               ".visible .entry k() { ret; }\n")
    assert good["ok"] and good["registers"] is not None, good
    bad = ptx_checks.assemble(".version 8.0\n.target sm_90\n.address_size 64\n"
                              ".visible .entry k() { add.f32 %f1, %f2; ret; }\n")
    assert not bad["ok"] and bad["error"], bad
