"""``mlcvlab bench`` on a tiny configuration: the JSON has every field (no timing assertions)."""
import json
import sys

import pytest

from mlcvlab import bench
from mlcvlab.nn import conv
from mlcvlab.cli import main


def _run(tmp_path, *extra):
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--models", "mlp,lenet5", "--batch-size", "8",
                 "--threads", "1", "--out", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


def _check_phase(row, with_torch):
    assert row["ours_samples_per_s"] > 0 and len(row["ours_seconds"]) == 1
    if with_torch:
        assert row["torch_samples_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["ours_samples_per_s"] / row["torch_samples_per_s"])
        lo, hi = row["ratio_range"]
        assert lo <= row["ratio"] * (1 + 1e-12) and row["ratio"] <= hi * (1 + 1e-12)
    else:
        assert "torch_samples_per_s" not in row and "ratio" not in row
        assert "ratio_range" not in row


def test_bench_quick_writes_every_field(tmp_path, capsys):
    res = _run(tmp_path)
    assert res["config"]["batch_size"] == 8 and res["config"]["threads"] == 1
    assert res["machine"]["cpu"] and res["machine"]["torch"]
    assert res["sgemm_gflops"] > 0
    assert len(res["sgemm_gflops_samples"]) == 2         # before and after the models
    assert res["sgemm_gflops"] == max(res["sgemm_gflops_samples"])
    flops = bench.mlp_step_flops(bench.MLP_SIZES, 8)
    assert flops == 2 * 8 * (2 * 784 * 1000 + 3 * 1000 * 1000 + 3 * 1000 * 10)  # no dx of data
    assert res["mlp_train_gflops"] == pytest.approx(
        flops * res["models"]["mlp"]["train"]["ours_samples_per_s"] / 8 / 1e9)
    assert res["mlp_fraction_of_sgemm_peak"] == pytest.approx(
        res["mlp_train_gflops"] / res["sgemm_gflops"])
    assert res["mlp_gemms_gflops"] > 0 and res["torch_mlp_gemms_gflops"] > 0
    torch_flops = flops * res["models"]["mlp"]["train"]["torch_samples_per_s"] / 8 / 1e9
    assert res["torch_mlp_fraction_of_sgemm_peak"] == pytest.approx(
        torch_flops / res["sgemm_gflops"])
    assert res["torch_mlp_gemms_fraction_of_sgemm_peak"] == pytest.approx(
        res["torch_mlp_gemms_gflops"] / res["sgemm_gflops"])
    assert res["mlp_gemms_fraction_of_sgemm_peak"] == pytest.approx(
        res["mlp_gemms_gflops"] / res["sgemm_gflops"])
    assert "VmHWM" in res["memory_method"]
    assert res["machine"]["blas"] and res["machine"]["numba_vector_bytes"] in (32, 64)
    train = res["models"]["lenet5"]["train"]
    for who in ("ours", "torch"):
        assert train[f"{who}_gflops"] == pytest.approx(
            bench.conv_train_flops("lenet5") * train[f"{who}_samples_per_s"] / 1e9)
        assert train[f"{who}_fraction_of_sgemm_peak"] == pytest.approx(
            train[f"{who}_gflops"] / res["sgemm_gflops"])
    for name in ("mlp", "lenet5"):
        r = res["models"][name]
        _check_phase(r["train"], True)
        _check_phase(r["eval"], True)
        mem = r["memory"]
        assert mem["ours"]["rss_mb"] >= 0 and mem["ours"]["tracemalloc_mb"] > 0
        assert mem["torch"]["rss_mb"] >= 0
    table = capsys.readouterr().out
    assert "| lenet5 | train |" in table and "SGEMM peak" in table
    assert table.startswith("Machine: ") and "its GEMMs alone" in table
    assert "PyTorch's MLP training step" in table


def test_cpu_simd_names_the_vector_extension():
    simd = bench.cpu_simd()
    if sys.platform.startswith("linux"):      # elsewhere there is no /proc/cpuinfo: ""
        assert "AVX-512" in simd or "AVX2" in simd or "no AVX2" in simd


def test_bench_without_torch_shows_ours_alone(tmp_path, capsys):
    res = _run(tmp_path, "--no-torch", "--no-memory")
    assert res["machine"]["torch"] is None
    assert "torch_mlp_gemms_gflops" not in res and "torch_mlp_fraction_of_sgemm_peak" not in res
    for name in ("mlp", "lenet5"):
        _check_phase(res["models"][name]["train"], False)
        _check_phase(res["models"][name]["eval"], False)
        assert "memory" not in res["models"][name]
    assert "ours alone" in capsys.readouterr().out


def test_bench_rejects_an_unknown_model(capsys):
    assert main(["bench", "--quick", "--models", "vgg", "--no-memory"]) == 1
    assert "unknown model 'vgg'" in capsys.readouterr().err


def test_summary_gives_the_ratio_of_medians_and_the_range_over_sample_pairs():
    row = bench._summary([0.010, 0.020, 0.030], [0.020, 0.020, 0.060], batch=128)
    assert row["ours_samples_per_s"] == pytest.approx(128 / 0.020)
    assert row["ratio"] == pytest.approx(1.0)            # median 0.020 s each
    assert row["ratio_range"] == pytest.approx([1.0, 2.0])   # pairs: 2.0, 1.0, 2.0


@pytest.fixture(scope="module")
def torch_twins():
    ref = bench.load_reference(bench.find_reference())
    assert ref is not None, "benchmarks/torch_reference.py and torch must be importable"
    return ref


@pytest.mark.parametrize("name", bench.MODEL_NAMES)
def test_torch_twins_have_our_parameters_and_layers(torch_twins, name):
    """Every benched model's torch twin has the same parameter count and the same top-level
    layers (so the per-layer table lines up row by row)."""
    ours, theirs = bench.build_ours(name), torch_twins.build(name)
    assert sum(p.data.size for p in ours.parameters()) == sum(p.numel()
                                                             for p in theirs.parameters())
    assert len(list(ours)) == len(list(theirs)) == len(bench.layer_labels(name))


def test_per_layer_times_every_layer_of_both_frameworks(torch_twins, tmp_path, capsys):
    res = _run(tmp_path, "--no-memory", "--per-layer")
    for name in ("mlp", "lenet5"):
        rows = res["models"][name]["per_layer"]["layers"]
        assert [r["layer"] for r in rows] == bench.layer_labels(name)
        for r in rows:
            assert r["ours_forward_ms"] > 0 and r["torch_forward_ms"] > 0
            assert r["ours_backward_ms"] >= 0 and r["torch_backward_ms"] >= 0
        # the last layer (with parameters) has a backward on both sides
        assert rows[-1]["ours_backward_ms"] > 0 and rows[-1]["torch_backward_ms"] > 0
    out = capsys.readouterr().out
    assert "Per layer, lenet5, batch 8" in out and "| 3 Conv2d -> (16, 10, 10) |" in out


def test_per_conv_times_each_distinct_convolution_of_both_frameworks(torch_twins, tmp_path,
                                                                      capsys):
    res = _run(tmp_path, "--no-memory", "--per-conv")
    assert "per_conv" not in res["models"]["mlp"]              # no convolution to time
    rows = res["models"]["lenet5"]["per_conv"]["convolutions"]
    specs = bench.conv_specs("lenet5")
    assert [r["conv"] for r in rows] == [bench.conv_label(s) for s in specs] == [
        "1->6 5x5 s1 p2 on 28x28", "6->16 5x5 s1 p0 on 14x14"]
    assert [r["input_grad"] for r in rows] == [False, True]   # the first layer is on the data
    for r, s in zip(rows, specs):
        x_shape = (8,) + s["in_shape"]
        w_shape = (s["out_channels"], s["in_shape"][0]) + s["kernel"]
        assert (r["forward_algorithm"], r["backward_algorithm"]) == conv.algorithm(
            x_shape, w_shape, s["stride"], s["padding"])
        for who in ("ours", "torch"):
            assert r[f"{who}_forward_ms"] > 0 and r[f"{who}_backward_ms"] > 0
        assert r["forward_ratio"] == pytest.approx(r["torch_forward_ms"] / r["ours_forward_ms"])
    out = capsys.readouterr().out
    assert "Per convolution, lenet5, batch 8" in out
    assert "| 1->6 5x5 s1 p2 on 28x28 (no dx) | 1 | direct / direct |" in out


def test_per_layer_and_per_conv_without_torch_time_ours_alone(tmp_path, capsys):
    res = _run(tmp_path, "--no-memory", "--no-torch", "--per-layer", "--per-conv")
    layer_rows = res["models"]["lenet5"]["per_layer"]["layers"]
    conv_rows = res["models"]["lenet5"]["per_conv"]["convolutions"]
    for r in layer_rows + conv_rows:
        assert r["ours_forward_ms"] > 0 and r["ours_backward_ms"] >= 0
        assert not any(k.startswith("torch_") or k.endswith("_ratio") for k in r), r
    out = capsys.readouterr().out
    assert "Per convolution, lenet5, batch 8" in out and "torch fwd ms" not in out


def test_conv_specs_count_the_layers_that_share_a_convolution():
    specs = bench.conv_specs("resnet20")
    assert [(bench.conv_label(s), s["layers"]) for s in specs] == [
        ("3->16 3x3 s1 p1 on 32x32", 1), ("16->16 3x3 s1 p1 on 32x32", 6),
        ("16->32 3x3 s2 p1 on 32x32", 1), ("32->32 3x3 s1 p1 on 16x16", 5),
        ("32->64 3x3 s2 p1 on 16x16", 1), ("64->64 3x3 s1 p1 on 8x8", 5)]
    assert sum(s["layers"] for s in specs) == 19                # ResNet-20: 19 convolutions


def test_models_all_selects_every_model(monkeypatch):
    seen = {}
    monkeypatch.setattr(bench, "run", lambda models, *a, **k: seen.setdefault("m", models)
                        or {})
    monkeypatch.setattr(bench, "format_table", lambda result: "")
    main(["bench", "--models", "all", "--no-memory", "--quick"])
    assert seen["m"] == list(bench.MODEL_NAMES)


def test_bench_device_cuda_without_a_gpu_fails_before_timing(capsys):
    """No GPU (and no simulator in this process): a clear error, nothing timed."""
    assert main(["bench", "--quick", "--models", "mlp", "--no-memory", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "no CUDA device found" in err and "device 'cpu'" in err, err


def test_bench_conv_algorithm_is_used_recorded_and_restored(tmp_path, capsys, monkeypatch):
    from mlcvlab.nn import conv
    seen = []
    original = bench.ours_steps

    def spy(*args, **kwargs):
        seen.append(conv.get_algorithm())
        return original(*args, **kwargs)
    monkeypatch.setattr(bench, "ours_steps", spy)
    before = conv.get_algorithm()
    res = _run(tmp_path, "--no-torch", "--no-memory", "--conv-algorithm", "fast")
    assert res["config"]["conv_algorithm"] == "fast" and seen and set(seen) == {"fast"}
    assert "set_algorithm('fast')" in capsys.readouterr().out
    assert conv.get_algorithm() == before


def test_bench_conv_algorithm_choices_are_conv_algorithms():
    import argparse
    from mlcvlab.nn import conv
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    action = next(a for a in parser._subparsers._group_actions[0].choices["bench"]._actions
                  if a.dest == "conv_algorithm")
    assert tuple(action.choices) == conv.ALGORITHMS


def test_bench_conv_rule_times_each_direction_of_each_algorithm(capsys):
    """benchmarks/bench_conv_rule.py (the measurement behind conv.direct_pays) runs: one line
    per shape and direction, the first algorithm's ratio 1, a stride-2 shape included."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_conv_rule.py"
    spec = importlib.util.spec_from_file_location("bench_conv_rule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--threads", "1", "--batch", "2", "--rounds", "2", "--algorithms",
                 "im2col,direct", "3x4x8", "2x5x9x3x1x2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [" ".join(line.split()[:6]) for line in lines] == [
        "3->4 8x8 3x3 p1 s1 forward", "3->4 8x8 3x3 p1 s1 backward",
        "2->5 9x9 3x3 p1 s2 forward", "2->5 9x9 3x3 p1 s2 backward"]
    for line in lines:
        assert "im2col" in line and "x1.00 (1.00-1.00)" in line and "| direct " in line
    assert conv.get_algorithm() == "auto"                    # restored


def test_conv_train_flops_counts_forward_dx_and_dw_of_convs_and_linears():
    """ResNet-20 by hand: the stem 3->16 on 32x32, 6 + 5 + 5 convs of 16/32/64 channels at
    2,359,296 multiply-adds each (32x32, 16x16, 8x8), the two stride-2 convs at 1,179,648,
    the 64->10 linear; three times over (forward, dx, dW), less the stem's dx."""
    stem = 3 * 16 * 9 * 32 * 32
    macs = stem + 16 * 2359296 + 2 * 1179648 + 64 * 10
    assert bench.conv_train_flops("resnet20") == 2 * (3 * macs - stem)
