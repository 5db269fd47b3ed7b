"""mlcvlab.vision: IoU by hand, NMS against a brute-force reference (ties, degenerate boxes),
batched NMS, anchors, encode/decode round trips, and the errors of malformed boxes.

torchvision is not installed; the reference below is the greedy loop of torchvision's CPU
kernel (nms_kernel.cpp) written with Python scalars: a stable descending sort of the scores,
then suppress every later box whose IoU with a kept box is > the threshold.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcvlab import vision
from mlcvlab.vision import (batched_nms, box_area, box_iou, clip_boxes, decode_boxes,
                            encode_boxes, generate_anchors, nms, remove_small_boxes)


# -- the brute-force reference -------------------------------------------------------------------
def iou_scalar(a, b) -> float:
    """IoU of two boxes with Python floats, in the kernel's order of operations; 0 for an empty
    union."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]),
                                                             0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def nms_reference(boxes, scores, threshold):
    """Greedy NMS, one pair at a time."""
    boxes = [[float(v) for v in row] for row in boxes]
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    suppressed = [False] * len(boxes)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            if not suppressed[j] and iou_scalar(boxes[i], boxes[j]) > threshold:
                suppressed[j] = True
    return keep


def random_case(gen: np.random.Generator):
    """Random boxes on a small integer grid (so exact ties in IoU and score happen), some of
    them degenerate (zero width or height), some duplicated; scores with many ties."""
    n = int(gen.integers(0, 40))
    x1, y1 = gen.integers(0, 20, n), gen.integers(0, 20, n)
    w, h = gen.integers(0, 12, n), gen.integers(0, 12, n)
    boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float64)
    if n > 2:
        dup = gen.integers(0, n, n // 4)
        boxes[gen.integers(0, n, dup.size)] = boxes[dup]
    if gen.random() < 0.5:
        boxes += gen.random((n, 1)) * 0.5          # some non-integer positions too
    scores = gen.integers(0, 5, n).astype(np.float64) if gen.random() < 0.7 else gen.random(n)
    threshold = float(gen.choice([0.0, 0.1, 0.3, 0.5, 0.7, 1.0, gen.random()]))
    return boxes, scores, threshold


# -- IoU and area ---------------------------------------------------------------------------------
def test_box_area_and_iou_by_hand():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 5, 9]], dtype=float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [10, 10, 11, 12]], dtype=float)
    np.testing.assert_array_equal(box_area(a), [4, 1, 0])
    iou = box_iou(a, b)
    assert iou.shape == (3, 3)
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7
    assert iou[0, 0] == pytest.approx(1 / 7)
    assert iou[0, 1] == 1.0                       # identical boxes
    assert iou[1, 1] == pytest.approx(1 / 4)      # contained: 1 / 4
    assert iou[1, 0] == 0.0                       # touching at a corner only
    assert iou[0, 2] == 0.0                       # disjoint
    assert iou[2, 0] == 0.0 and iou[2, 1] == 0.0  # degenerate box: zero intersection


def test_iou_of_two_identical_points_is_zero_not_nan():
    p = np.array([[3.0, 3.0, 3.0, 3.0]])
    assert box_iou(p, p)[0, 0] == 0.0


def test_box_iou_empty_inputs():
    assert box_iou(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_box_iou_matches_scalar_reference_and_is_symmetric(seed):
    gen = np.random.default_rng(seed)
    a, _, _ = random_case(gen)
    b, _, _ = random_case(gen)
    iou = box_iou(a, b)
    want = np.array([[iou_scalar(x, y) for y in b] for x in a]).reshape(len(a), len(b))
    np.testing.assert_array_equal(iou, want)
    np.testing.assert_array_equal(box_iou(b, a), iou.T)
    assert np.all((iou >= 0) & (iou <= 1))


# -- NMS ------------------------------------------------------------------------------------------
def test_nms_equals_brute_force_on_1200_seeded_random_cases():
    gen = np.random.default_rng(2023)
    n_ties = n_degenerate = 0
    for _ in range(1200):
        boxes, scores, t = random_case(gen)
        got = nms(boxes, scores, t)
        assert got.dtype == np.int64
        assert got.tolist() == nms_reference(boxes, scores, t), (boxes, scores, t)
        n_ties += len(set(scores.tolist())) < len(scores)
        n_degenerate += bool(np.any(box_area(boxes) == 0)) if len(boxes) else 0
    assert n_ties > 500 and n_degenerate > 500     # the cases do exercise ties and zero areas


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 15), st.integers(0, 8),
                          st.integers(0, 8), st.integers(0, 3)), max_size=25),
       st.sampled_from([0.0, 0.2, 1 / 3, 0.5, 0.7, 1.0]))
def test_nms_equals_brute_force_hypothesis(rows, threshold):
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in rows], dtype=float).reshape(-1, 4)
    scores = np.array([s for *_, s in rows], dtype=float)
    assert nms(boxes, scores, threshold).tolist() == nms_reference(boxes, scores, threshold)


def test_nms_ties_keep_the_lower_index_and_threshold_is_strict():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5]], dtype=float)
    scores = np.array([0.5, 0.5, 0.9])
    # box 2 (IoU 0.5 with the others) first; then the tie 0/1 keeps 0, which suppresses 1
    assert nms(boxes, scores, 0.5).tolist() == [2, 0]       # 0.5 is not > 0.5: 0 is kept
    assert nms(boxes, scores, 0.49).tolist() == [2]
    assert nms(boxes, scores, 1.0).tolist() == [2, 0, 1]   # IoU 1 is not > 1


def test_nms_keeps_degenerate_boxes_and_handles_empty_input():
    boxes = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 4, 4]], dtype=float)
    assert nms(boxes, np.array([3.0, 2.0, 1.0]), 0.0).tolist() == [0, 1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_batched_nms_never_suppresses_across_categories():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]],
                     dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert batched_nms(boxes, scores, np.array([0, 1, 0, 1]), 0.5).tolist() == [3, 0, 1]
    assert batched_nms(boxes, scores, np.array([0, 0, 0, 0]), 0.5).tolist() == [3, 0]


def test_batched_nms_equals_per_category_reference():
    gen = np.random.default_rng(7)
    for _ in range(300):
        boxes, scores, t = random_case(gen)
        ids = gen.integers(0, 3, len(boxes))
        want = []
        for c in np.unique(ids):
            members = np.flatnonzero(ids == c)
            want += [int(members[k]) for k in nms_reference(boxes[members], scores[members], t)]
        want.sort(key=lambda i: (-scores[i], i))
        assert batched_nms(boxes, scores, ids, t).tolist() == want


# -- malformed input ----------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [lambda b: nms(b, np.ones(len(b)), 0.5), box_area,
                                lambda b: box_iou(b, b), lambda b: clip_boxes(b, 10, 10)])
def test_malformed_boxes_raise_naming_the_row(fn):
    good = [[0, 0, 1, 1], [0, 0, 2, 2]]
    with pytest.raises(ValueError, match=r"row 1 .*x2 >= x1"):
        fn(np.array(good + [[5, 0, 4, 1]], dtype=float)[[0, 2, 1]])
    with pytest.raises(ValueError, match="row 2 is not finite"):
        fn(np.array(good + [[0, np.nan, 1, 1]]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        fn(np.ones((3, 5)))


def test_nms_error_names_the_function_and_bad_scores_or_threshold():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], dtype=float)
    with pytest.raises(ValueError, match=r"^nms: boxes row 1 .*y2 >= y1"):
        nms(np.array([[0, 0, 1, 1], [0, 3, 2, 2]], dtype=float), np.ones(2), 0.5)
    with pytest.raises(ValueError, match=r"nms: scores must have shape \(2,\)"):
        nms(boxes, np.ones(3), 0.5)
    with pytest.raises(ValueError, match=r"nms: scores\[1\] is not finite"):
        nms(boxes, np.array([1.0, np.nan]), 0.5)
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        nms(boxes, np.ones(2), 1.5)
    with pytest.raises(ValueError, match="batched_nms: idxs"):
        batched_nms(boxes, np.ones(2), np.array([0.5, 1.0]), 0.5)


# -- anchors ---------------------------------------------------------------------------------------
def test_anchor_count_centres_sizes_and_order():
    scales, ratios = [16.0, 32.0], [0.5, 1.0, 2.0]
    anchors = generate_anchors((3, 4), 8, scales, ratios)
    a = len(scales) * len(ratios)
    assert anchors.shape == (3 * 4 * a, 4)
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    k = np.arange(len(anchors))
    cell = k // a
    np.testing.assert_allclose(cx, (cell % 4 + 0.5) * 8)     # row by row over the cells
    np.testing.assert_allclose(cy, (cell // 4 + 0.5) * 8)
    np.testing.assert_allclose(w * h, np.tile([s * s for s in scales], len(ratios))[k % a])
    np.testing.assert_allclose(h / w, np.repeat(ratios, len(scales))[k % a])


def test_anchors_reject_bad_arguments():
    with pytest.raises(ValueError, match="scales"):
        generate_anchors((2, 2), 8, [], [1.0])
    with pytest.raises(ValueError, match="aspect_ratios"):
        generate_anchors((2, 2), 8, [16], [0.0])
    with pytest.raises(ValueError, match="stride"):
        generate_anchors((2, 2), float("nan"), [16], [1.0])
    with pytest.raises(ValueError, match="feature_shape"):
        generate_anchors((0, 2), 8, [16], [1.0])


# -- encode / decode ------------------------------------------------------------------------------
def positive_boxes(gen, n):
    xy = gen.uniform(-50, 50, (n, 2))
    wh = gen.uniform(2.0, 80, (n, 2))      # ratios < 62.5: below the clamp
    return np.concatenate([xy, xy + wh], axis=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_of_encode_is_identity(weights):
    gen = np.random.default_rng(0)
    anchors, boxes = positive_boxes(gen, 500), positive_boxes(gen, 500)
    deltas = encode_boxes(anchors, boxes, weights)
    np.testing.assert_allclose(decode_boxes(anchors, deltas, weights), boxes, atol=1e-9)
    np.testing.assert_allclose(encode_boxes(anchors, decode_boxes(anchors, deltas, weights),
                                            weights), deltas, atol=1e-9)


def test_encode_by_hand_and_decode_clamps():
    anchor = np.array([[0.0, 0.0, 10.0, 20.0]])             # centre (5, 10), 10 x 20
    box = np.array([[5.0, 0.0, 25.0, 10.0]])                # centre (15, 5), 20 x 10
    np.testing.assert_allclose(encode_boxes(anchor, box),
                               [[1.0, -0.25, math.log(2.0), math.log(0.5)]])
    huge = decode_boxes(anchor, np.array([[0.0, 0.0, 100.0, 100.0]]))
    np.testing.assert_allclose(huge[0, 2] - huge[0, 0], 10 * 1000 / 16)
    assert np.isfinite(huge).all()


def test_encode_decode_validation():
    a = np.array([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"encode_boxes: boxes row 0 .*x2 > x1"):
        encode_boxes(a, np.array([[0.0, 0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="same shape"):
        encode_boxes(a, np.ones((2, 4)) * [0, 0, 1, 1])
    with pytest.raises(ValueError, match="decode_boxes: deltas row 0 is not finite"):
        decode_boxes(a, np.array([[np.inf, 0, 0, 0]]))
    with pytest.raises(ValueError, match="weights"):
        decode_boxes(a, np.zeros((1, 4)), weights=(1, 1, 0, 1))


def test_clip_and_remove_small():
    b = np.array([[-5.0, -5.0, 5.0, 5.0], [8.0, 8.0, 30.0, 9.5]])
    np.testing.assert_array_equal(clip_boxes(b, 10, 20), [[0, 0, 5, 5], [8, 8, 20, 9.5]])
    assert remove_small_boxes(b, 2.0).tolist() == [0]
    assert vision.DEFAULT_CLAMP == pytest.approx(math.log(62.5))


def test_nms_max_kept_is_a_prefix_of_the_full_answer():
    gen = np.random.default_rng(3)
    for _ in range(100):
        boxes, scores, t = random_case(gen)
        full = nms(boxes, scores, t).tolist()
        for k in (0, 1, 3, 1000):
            assert nms(boxes, scores, t, max_kept=k).tolist() == full[:k]
    with pytest.raises(ValueError, match="max_kept"):
        nms(np.zeros((1, 4)), np.zeros(1), 0.5, max_kept=-1)


def test_nms_loop_path_equals_matrix_path(monkeypatch):
    """Above MATRIX_NMS_MAX boxes (512) nms uses the one-row-per-kept-box loop: same answer."""
    gen = np.random.default_rng(11)
    cases = [random_case(gen) for _ in range(200)]
    want = [nms(b, s, t).tolist() for b, s, t in cases]
    monkeypatch.setattr(vision, "MATRIX_NMS_MAX", -1)
    assert [nms(b, s, t).tolist() for b, s, t in cases] == want
    assert [nms(b, s, t).tolist() for b, s, t in cases] == [nms_reference(b, s, t)
                                                            for b, s, t in cases]
