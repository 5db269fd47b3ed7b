"""Lab ``architectures``: CNN architecture arithmetic computed from layer specs.

AlexNet parameters per layer (two-GPU grouping and single-GPU), VGG19
activations and weights per layer, the receptive field of N stacked F×F
convs (formula vs brute force), and the Inception module naive vs with
dimension reduction. Everything is computed by :mod:`mlcvlab.analysis`; the
run is arithmetic only (deterministic, nothing measured, no seeds), so the
standard and full presets are the whole computation and take seconds, and
the quick preset differs only in the size of the receptive-field table. No
report sentence compares measured arms: ``results["comparisons"]`` is empty.
"""
from __future__ import annotations

from typing import Any, Dict, List

from mlcvlab import analysis as A
from mlcvlab.analysis.architectures import RESNET_BLOCKS
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure

_PRESET = {"rf_max_n": 5, "rf_kernels": [3, 5, 7], "inception_in": [256, 32, 32],
           "n1x1": 64, "n3x3_reduce": 96, "n3x3": 128, "n5x5_reduce": 16, "n5x5": 32,
           "pool_proj": 32, "resnet_depths": [18, 50, 152]}


def _shape(s) -> str:
    return "x".join(map(str, s))


def alexnet_tables() -> Dict[str, Any]:
    grouped = A.analyze(A.alexnet(True), A.ALEXNET_INPUT)
    single = A.analyze(A.alexnet(False), A.ALEXNET_INPUT)
    rows = [{"layer": g.name, "output": _shape(g.out_shape), "weights (2 GPUs)": g.weights,
             "weights (1 GPU)": s.weights, "biases": g.biases, "params (2 GPUs)": g.params,
             "params (1 GPU)": s.params} for g, s in zip(grouped, single) if s.params]
    tg, ts = A.totals(grouped), A.totals(single)
    return {"alexnet_rows": rows, "alexnet_params_grouped": tg["params"],
            "alexnet_params_single": ts["params"], "alexnet_biases": tg["biases"],
            "alexnet_macs_grouped": tg["macs"], "alexnet_macs_single": ts["macs"],
            "alexnet_fc_share": sum(r["params (2 GPUs)"] for r in rows
                                    if r["layer"].startswith("fc"))
            / tg["params"]}


def vgg19_tables() -> Dict[str, Any]:
    rows_all = A.analyze(A.vgg19(), A.IMAGENET_INPUT)
    rows = [{"layer": "input", "output": _shape(A.IMAGENET_INPUT),
             "activations": 3 * 224 * 224, "weights (no biases)": 0}]
    rows += [{"layer": r.name, "output": _shape(r.out_shape), "activations": r.activations,
              "weights (no biases)": r.weights} for r in rows_all]
    t = A.totals(rows_all)
    acts = sum(r["activations"] for r in rows)          # including the input image
    half = len(rows_all) // 2
    first_acts = sum(r.activations for r in rows_all[:half]) + rows[0]["activations"]
    late_weights = sum(r.weights for r in rows_all[half:])
    return {"vgg19_half_layer": rows_all[half - 1].name,
            "vgg19_first_half_act_share": first_acts / acts,
            "vgg19_second_half_weight_share": late_weights / t["weights"],
            "vgg19_rows": rows, "vgg19_weights": t["weights"], "vgg19_biases": t["biases"],
            "vgg19_activations": acts, "vgg19_activation_mb": 4 * acts / 2**20,
            "vgg19_weight_mb": 4 * t["weights"] / 2**20, "vgg19_macs": t["macs"],
            "vgg19_conv_weight_share": sum(r.weights for r in rows_all if r.kind.startswith("conv"))
            / t["weights"]}


def receptive_field_table(max_n: int, kernels: List[int]) -> Dict[str, Any]:
    rows = []
    for f in kernels:
        for n in range(1, max_n + 1):
            formula, brute = A.stacked_receptive_field(n, f), A.receptive_field_bruteforce([f] * n)
            rows.append({"N": n, "F": f, "N*F-N+1": formula, "brute force": brute,
                         "agree": formula == brute,
                         "weights per channel pair (stack)": n * f * f,
                         "weights per channel pair (one conv of that field)": formula * formula})
    return {"rf_rows": rows, "rf_all_agree": all(r["agree"] for r in rows), "rf_cases": len(rows)}


def inception_tables(config: Dict[str, Any]) -> Dict[str, Any]:
    cfg = A.InceptionConfig(*(config[k] for k in ("n1x1", "n3x3_reduce", "n3x3", "n5x5_reduce",
                                                  "n5x5", "pool_proj")))
    shape = tuple(config["inception_in"])
    out = {}
    for kind, build in (("naive", A.inception_naive), ("reduced", A.inception_reduced)):
        rows = A.analyze(build(shape[0], cfg), shape)
        out[f"inception_{kind}_rows"] = [{"layer": r.name, "output": _shape(r.out_shape),
                                          "multiplies": r.macs, "weights": r.weights} for r in rows]
        out[f"inception_{kind}_output"] = _shape(rows[-1].out_shape)
        out[f"inception_{kind}_macs"] = A.totals(rows)["macs"]
        out[f"inception_{kind}_params"] = A.totals(rows)["params"]
    out["inception_input"] = _shape(shape)
    out["inception_ratio"] = out["inception_naive_macs"] / out["inception_reduced_macs"]
    out["inception_filters"] = vars(cfg)
    return out


def resnet_table(depths: List[int]) -> Dict[str, Any]:
    rows = []
    for d in depths:
        t = A.totals(A.analyze(A.resnet(d), A.IMAGENET_INPUT))
        rows.append({"model": f"ResNet-{d}", "params": t["params"], "multiply-adds": t["macs"],
                     "activations": t["activations"],
                     "param MB (float32)": 4 * t["params"] / 2**20})
    return {"resnet_rows": rows}


def _figures(rep: Report, results: Dict[str, Any]) -> None:
    rows = results["vgg19_rows"][1:]
    fig, ax = new_figure(figsize=(11, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["activations"] for r in rows], 0.4, label="activations",
           color="C0")
    weights = [r["weights (no biases)"] or float("nan") for r in rows]   # pools: no bar
    ax.bar([i + 0.2 for i in x], weights, 0.4, label="weights (no biases; pools have none)",
           color="C1")
    ax.set_yscale("log")
    ax.set_xticks(list(x), [r["layer"] for r in rows], rotation=70, fontsize=7)
    ax.set_xlabel("VGG19 layer")
    ax.set_ylabel("count (activations per image, weights per model; log scale)")
    ax.set_title("VGG19 (configuration E, 224x224x3): activations and weights per layer")
    ax.legend(loc="upper center")
    rep.figure("vgg19_per_layer", fig, "VGG19 per layer ({vgg19_activations:,} activations, "
               "{vgg19_weights:,} weights, computed from the layer specs): "
               "{vgg19_first_half_act_share:.0%} of the activations (input included) are in the "
               "layers up to {vgg19_half_layer}, the first half, and "
               "{vgg19_second_half_weight_share:.0%} of the weights in the second half.")
    fig, ax = new_figure(figsize=(5, 4))
    for i, f in enumerate(sorted({r["F"] for r in results["rf_rows"]})):
        pts = [r for r in results["rf_rows"] if r["F"] == f]
        ax.plot([r["N"] for r in pts], [r["N*F-N+1"] for r in pts], "-", color=f"C{i}",
                label=f"F={f}: formula N*F-N+1 (line)")
        ax.plot([r["N"] for r in pts], [r["brute force"] for r in pts], "o", color=f"C{i}",
                label=f"F={f}: brute force (markers)")
    n_max = max(r["N"] for r in results["rf_rows"])
    ax.set_xticks(range(1, n_max + 1))
    ax.set_xlabel("N (number of stacked stride-1 convs)")
    ax.set_ylabel("receptive field (pixels per side)")
    ax.set_title("Receptive field of N stacked FxF convs")
    ax.legend(fontsize=7)
    rep.figure("receptive_field", fig, "Receptive field of N stacked FxF convs: "
               "markers brute force, lines N*F-N+1.")


def _write_report(out_dir, config: Dict[str, Any], results: Dict[str, Any]) -> None:
    rep = Report(out_dir, "CNN architecture arithmetic", results)
    rep.setup(config)
    rep.text("Every number in this report is computed from the layer specifications "
             "(exact arithmetic, deterministic): nothing is measured, so no number has an "
             "interval and no comparison of measured arms is made.")
    rep.section("AlexNet parameters per layer")
    rep.text("Input 227x227x3 (the size for which conv1, 11x11 stride 4, gives 55x55 maps). In the "
             "two-GPU network conv2, conv4 and conv5 see only the kernel maps on their own GPU "
             "(groups=2); conv3 and the FC layers connect across GPUs. Total parameters: "
             "{alexnet_params_grouped:,} with the grouping, {alexnet_params_single:,} without "
             "(biases {alexnet_biases:,}); the FC layers hold {alexnet_fc_share:.1%} of the "
             "grouped total. Multiply-adds per image: {alexnet_macs_grouped:,} grouped, "
             "{alexnet_macs_single:,} ungrouped.")
    rep.table("alexnet", results["alexnet_rows"], "AlexNet parameters per layer")
    rep.section("VGG19 activations and weights per layer")
    rep.text("Configuration E, 224x224x3 input, weights counted without biases. Totals: "
             "{vgg19_activations:,} activations ({vgg19_activation_mb:.1f} MB float32 per image, "
             "forward only) and {vgg19_weights:,} weights ({vgg19_weight_mb:.1f} MB); with the "
             "{vgg19_biases:,} biases the model has {vgg19_params:,} parameters. The conv layers "
             "hold {vgg19_conv_weight_share:.1%} of the weights.")
    rep.table("vgg19", results["vgg19_rows"], "VGG19 per layer")
    _figures(rep, results)
    rep.section("Receptive field of N stacked FxF convolutions")
    rep.text("Formula N*F - N + 1 against a brute-force count (the set of input pixels one output "
             "pixel depends on, propagated back layer by layer): all {rf_cases} cases agree: "
             "{rf_all_agree}.")
    rep.table("receptive_field", results["rf_rows"], "Receptive field, formula vs brute force")
    rep.section("Inception module: naive vs dimension reduction")
    rep.text("Input {inception_input} (C x H x W); filter counts {inception_filters}. Naive output "
             "{inception_naive_output} with {inception_naive_macs:,} multiplies; with 1x1 "
             "reductions output {inception_reduced_output} with {inception_reduced_macs:,} "
             "multiplies, {inception_ratio:.2f}x fewer.")
    rep.table("inception_naive", results["inception_naive_rows"], "Naive module")
    rep.table("inception_reduced", results["inception_reduced_rows"], "Dimension-reduction module")
    rep.section("ResNets (224x224, as torchvision)")
    rep.table("resnet", results["resnet_rows"], "ResNet parameters and multiply-adds per image")
    rep.conclusions([
        "Grouping conv2/4/5 over two GPUs saves {alexnet_group_saving:,} parameters of AlexNet.",
        "VGG19 has {vgg19_weights:,} weights without biases.",
        "N stacked FxF convs see N*F-N+1 pixels (brute force agrees: {rf_all_agree}).",
        "1x1 reductions cut the Inception module's multiplies {inception_ratio:.2f}-fold.",
    ])
    rep.write()


@lab(name="architectures",
     study="AlexNet / VGG19 / ResNet / Inception arithmetic; receptive fields of stacked convs",
     quick={**_PRESET, "rf_max_n": 3}, standard=_PRESET, full=_PRESET,
     expected_seconds={"quick": 3, "standard": 4, "full": 4})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Compute every table from the specs, then write the report."""
    check_config(config)
    results: Dict[str, Any] = {"comparisons": []}      # arithmetic: nothing measured to compare
    steps = [lambda: alexnet_tables(), lambda: vgg19_tables(),
             lambda: receptive_field_table(config["rf_max_n"], config["rf_kernels"]),
             lambda: inception_tables(config), lambda: resnet_table(config["resnet_depths"])]
    for step in progress(steps, desc="architectures"):
        results.update(step())
    results["alexnet_group_saving"] = (results["alexnet_params_single"]
                                       - results["alexnet_params_grouped"])
    results["vgg19_params"] = results["vgg19_weights"] + results["vgg19_biases"]
    _write_report(out_dir, config, results)
    return results


def check_config(config: Dict[str, Any]) -> None:
    """Raise a ValueError naming the first bad config value, before any work."""
    def bad(key, rule):
        raise ValueError(f"architectures: {key} must be {rule}, got {config[key]!r}")

    def ints(key, n=None):
        v = config[key]
        return (isinstance(v, (list, tuple)) and v and (n is None or len(v) == n)
                and all(isinstance(x, int) and x >= 1 for x in v))

    if int(config["rf_max_n"]) < 1:
        bad("rf_max_n", "an integer >= 1")
    if not ints("rf_kernels"):
        bad("rf_kernels", "a non-empty list of kernel sizes >= 1")
    if not ints("inception_in", 3):
        bad("inception_in", "three integers >= 1 (channels, height, width)")
    for key in ("n1x1", "n3x3_reduce", "n3x3", "n5x5_reduce", "n5x5", "pool_proj"):
        if int(config[key]) < 1:
            bad(key, "an integer >= 1")
    if not ints("resnet_depths") or any(d not in RESNET_BLOCKS for d in config["resnet_depths"]):
        bad("resnet_depths", f"a non-empty list of depths from {sorted(RESNET_BLOCKS)}")
