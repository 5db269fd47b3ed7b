"""The region-proposals lab: quick preset end to end, the smooth L1 loss and the RPN loss by
finite differences, the output layout against the anchors, anchor labelling, the canvases,
and config errors."""
import numpy as np
import pytest

from mlcvlab.labs import region_proposals as rp
from mlcvlab.labs import run_lab, stats
from mlcvlab.nn import BCEWithLogitsLoss
from mlcvlab.vision import generate_anchors

KEYS = ["comparisons", "recall_rows", "kept_rows", "timing_rows", "recall_by_arm", "verdict",
        "trained_recall", "untrained_recall", "trained_needed_90", "curves", "n_seeds", "paper",
        "anchors_total", "preset"]
FILES = ("report.md", "results.json", "example_proposals.png", "recall_and_kept.png",
         "nms_time.png", "training_curve.png", "recall_vs_proposals.csv",
         "kept_vs_threshold.csv", "nms_time.csv")


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The lab's quick preset, run once for all tests of this file."""
    return run_quick("region-proposals")


def test_quick_run_writes_report_figures_and_tables(quick_run):
    saved = quick_run.assert_outputs(keys=KEYS, files=FILES)
    report = quick_run.assert_report("Smoke test", "not measured here", "2,000",
                                     "not a finding of this run", substituted=False)
    assert saved["preset"] == "quick" and saved["n_seeds"] == 2
    counts = rp._QUICK["proposal_counts"]
    assert len(saved["recall_rows"]) == 3 * len(counts)
    assert {r["arm"] for r in saved["kept_rows"]} == {"trained RPN", "untrained RPN"}
    for arm, recalls in saved["recall_by_arm"].items():
        assert all(0 <= r <= 1 for r in recalls)
        assert recalls == sorted(recalls)               # more proposals never lose a box
    assert "CPU" in report and "wall" in report
    assert [r["boxes"] for r in saved["timing_rows"]] == rp._QUICK["nms_sizes"]
    for row in saved["kept_rows"]:                      # NMS keeps at most what it was given
        assert row["proposals kept per image"] <= row["proposals before NMS"] + 1e-9


def test_comparison_schema_and_sentence_in_report(quick_run):
    saved, report = quick_run.saved(), quick_run.report()
    c, c_nms = saved["comparisons"]
    assert (c["a"], c["b"], c["n_seeds"]) == ("trained RPN", "untrained RPN", 2)
    assert c_nms["b"] == rp.NO_NMS and c_nms["a"].startswith("trained RPN with NMS")
    for comp in (c, c_nms):
        stats.check_comparison(comp)
        assert comp["n_seeds"] == 2
        assert report.count(stats.sentence(comp)) == 2     # comparisons section + conclusions


def test_smooth_l1_value_and_gradient_by_finite_differences():
    gen = np.random.default_rng(0)
    pred, target = gen.normal(size=(7, 4)), gen.normal(size=(7, 4))
    pred[0, 0] = target[0, 0] + 0.05                    # inside the quadratic zone (beta 1/9)
    loss = rp.SmoothL1Loss(beta=1 / 9)
    value = loss(pred, target, normalizer=3.0)
    x = pred - target
    want = np.where(np.abs(x) < 1 / 9, 4.5 * x * x, np.abs(x) - 0.5 / 9).sum() / 3.0
    assert value == pytest.approx(want)
    grad, eps = loss.backward(), 1e-6
    for idx in np.ndindex(pred.shape):
        p, m = pred.copy(), pred.copy()
        p[idx] += eps
        m[idx] -= eps
        fd = (loss(p, target, 3.0) - loss(m, target, 3.0)) / (2 * eps)
        assert grad[idx] == pytest.approx(fd, abs=1e-6)
    with pytest.raises(ValueError, match="beta"):
        rp.SmoothL1Loss(beta=0.0)


def _small_setup():
    config = {**rp._QUICK, "canvas": 32, "anchors_per_image": 16}
    anchors = generate_anchors((4, 4), rp.STRIDE, config["anchor_scales"], config["aspect_ratios"])
    gt = [np.array([[2.0, 3.0, 14.0, 25.0], [18.0, 16.0, 30.0, 30.0]]), np.array([[5.0, 5.0, 27.0,
                                                                                  20.0]])]
    return config, anchors, rp.targets(gt, anchors, config)


def test_rpn_loss_gradient_by_finite_differences():
    """dL/dy of the whole RPN loss (BCE on the sampled anchors + smooth L1 on the positives)
    against central differences, with the same anchor sample at every evaluation."""
    config, anchors, tgts = _small_setup()
    a = rp.n_anchors(config)
    y = np.random.default_rng(1).normal(scale=0.5, size=(2, 5 * a, 4, 4))

    def total(y):
        obj, box, dy = rp.rpn_loss(y, tgts, config, np.random.default_rng(5),
                                   BCEWithLogitsLoss(), rp.SmoothL1Loss())
        return obj + config["box_weight"] * box, dy

    _, dy = total(y)
    assert np.count_nonzero(dy[:, :a]) > 0 and np.count_nonzero(dy[:, a:]) > 0
    gen, eps = np.random.default_rng(2), 1e-6
    nonzero = np.argwhere(dy != 0)
    picks = [tuple(i) for i in nonzero[gen.choice(len(nonzero), 25, replace=False)]]
    picks += [tuple(gen.integers(0, s) for s in y.shape) for _ in range(10)]
    for idx in picks:
        p, m = y.copy(), y.copy()
        p[idx] += eps
        m[idx] -= eps
        fd = (total(p)[0] - total(m)[0]) / (2 * eps)
        assert dy[idx] == pytest.approx(fd, abs=1e-6), idx


def test_output_layout_matches_the_anchor_order():
    """split_outputs puts channel a at cell (i, j) into row (i * W + j) * A + a, the order of
    generate_anchors; merge_grads is its inverse."""
    a, h, w = 3, 2, 4
    y = np.arange(2 * 5 * a * h * w, dtype=float).reshape(2, 5 * a, h, w)
    logits, deltas = rp.split_outputs(y, a)
    for i, j, k in np.ndindex(h, w, a):
        row = (i * w + j) * a + k
        assert logits[1, row] == y[1, k, i, j]
        assert deltas[1, row].tolist() == [y[1, a + 4 * k + c, i, j] for c in range(4)]
    np.testing.assert_array_equal(rp.merge_grads(logits, deltas, h, w, a), y)


def test_label_anchors_thresholds_and_best_anchor_rule():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 5], [20, 20, 30, 30],
                        [40, 40, 50, 50]], dtype=float)
    gt = np.array([[0, 0, 10, 10], [21, 21, 38, 38]], dtype=float)
    labels, matched = rp.label_anchors(anchors, gt, pos_iou=0.7, neg_iou=0.3)
    # IoU 1 -> positive; 0.8 -> positive; 0.5 -> ignored; 81/308 = 0.26 < 0.3 but the second
    # box's best anchor -> positive; 0 -> negative
    assert labels.tolist() == [1, 1, -1, 1, 0]
    assert matched[3] == 1
    pos, neg = rp.sample_anchors(labels, 4, np.random.default_rng(0))
    assert len(pos) == 2 and len(neg) == 1                # at most half positive, all negatives
    assert set(pos) <= {0, 1, 3} and neg.tolist() == [4]


def test_canvases_boxes_hold_all_the_ink():
    config = rp._QUICK
    X = np.zeros((5, 1, 28, 28), dtype=np.float32)
    X[:, 0, 6:22, 10:18] = 1.0
    images, boxes = rp.make_canvases(X, 20, config, np.random.default_rng(0))
    assert images.shape == (20, 1, config["canvas"], config["canvas"])
    inside = np.zeros(images.shape, bool)
    for i, b in enumerate(boxes):
        assert 1 <= len(b) <= config["max_digits"]
        assert np.all(b[:, :2] >= 0) and np.all(b[:, 2:] <= config["canvas"])
        heights = b[:, 3] - b[:, 1]
        assert np.all((heights >= config["min_digit"]) & (heights <= config["max_digit"]))
        for x1, y1, x2, y2 in b.astype(int):
            inside[i, 0, y1:y2, x1:x2] = True
    assert images[~inside].max() == 0 and images[inside].max() > 0.9


@pytest.mark.parametrize("override, match", [("lr=nan", "lr"), ("canvas=60", "multiple"),
                                             ("compare_at=7", "compare_at"),
                                             ("neg_iou=0.9", "neg_iou"),
                                             ("n_train=0", "n_train"),
                                             ("max_digit=200", "max_digit"),
                                             ("nms_iou=0.6", "nms_thresholds")])
def test_bad_config_raises_before_any_work(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        run_lab("region-proposals", quick=True, out_dir=str(tmp_path), show_progress=False,
                overrides=[override])
    assert not (tmp_path / "report.md").exists()
