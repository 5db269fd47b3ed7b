"""Lab ``region-proposals``: Faster R-CNN's Region Proposal Network and NMS, at toy scale.

Study: Ren, He, Girshick & Sun (2015), "Faster R-CNN: Towards Real-Time Object Detection with
Region Proposal Networks". An RPN slides a small network over a feature map; at every cell it
scores A anchors (boxes of several scales and aspect ratios centred on the cell) as object /
not object and regresses each anchor to a box. Greedy non-maximum suppression (NMS) then
removes proposals that overlap a higher-scored one; the top N survivors go to the detector.

Data: a synthetic detection set built from the embedded MNIST digits (``mnist10k``): each
``canvas`` x ``canvas`` image holds ``min_digits``..``max_digits`` digits, each cropped to its
ink, resized to a random height in [``min_digit``, ``max_digit``] pixels and pasted where it
overlaps no earlier digit by IoU > 0.1; its box is the pasted crop's rectangle. Training and
validation canvases use disjoint digits of the mnist10k training split; test canvases use the
mnist10k test split. Everything (canvases, initial weights, data order, sampled anchors) is
drawn from the seed.

Model (all :mod:`mlcvlab.nn`): three 3x3 stride-2 convolutions with ReLU (feature stride 8),
the RPN's 3x3 "sliding window" conv with ReLU, and one 1x1 conv giving per anchor an
objectness logit and four box deltas. Training as the paper: an anchor is positive when its
IoU with a true box is >= ``pos_iou`` or it is a box's best anchor, negative when its best IoU
is < ``neg_iou``; each step samples ``anchors_per_image`` anchors per image with at most half
positive; loss = BCE-with-logits on the sampled anchors + smooth L1 (beta 1/9) on the positive
anchors' deltas, both divided by the number sampled (torchvision's normalisation). Adam,
fixed epochs, no early stopping; the validation canvases give the training curve only.

Arms, paired by seed: the trained RPN, and the same network at its initial (random) weights.
Measured on the test canvases once at the end: recall of the true boxes at IoU >= 0.5 against
the number of proposals kept after NMS, the number of proposals NMS keeps against its IoU
threshold, and the CPU time of :func:`mlcvlab.vision.nms` against the number of boxes.

``device`` "cuda" (``--device cuda``) trains and runs both networks on the GPU. What stays on
the host, as the study defines it: labelling and sampling the anchors and the two losses on
the sampled ones (the network's output comes over, its gradient goes back, a few hundred KB
per step), decoding the proposals and NMS (``mlcvlab.vision`` is host code; its CPU time is
one of the measurements). The training time is then reported in wall seconds (device time).
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from mlcvlab.data import load
from mlcvlab.labs import stats
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure, timing_clock
from mlcvlab.nn import BCEWithLogitsLoss, Conv2d, ReLU, Sequential
from mlcvlab.optim import Adam
from mlcvlab.train.trainer import _host, _model_input
from mlcvlab import vision
from mlcvlab.vision import (box_iou, clip_boxes, decode_boxes, encode_boxes, generate_anchors,
                            nms, remove_small_boxes)

STRIDE = 8                      # three stride-2 convolutions
ARMS = ("trained RPN", "untrained RPN")                # the two networks
NO_NMS = "trained RPN without NMS"                      # top k by score, overlaps and all
RECALL_ARMS = (ARMS[0], NO_NMS, ARMS[1])
COLOURS = {"trained RPN": "tab:blue", NO_NMS: "tab:green", "untrained RPN": "tab:orange"}
PAPER = ("Ren et al. (2015) use 3 scales x 3 aspect ratios = 9 anchors per position (about "
         "20,000 anchors on a ~1000x600 image), label anchors positive at IoU > 0.7 (or a box's "
         "best anchor) and negative below 0.3, sample 256 anchors per image with up to half "
         "positive, and run NMS at IoU 0.7 on the proposals, which leaves about 2,000 proposals "
         "per image; Fast R-CNN is trained on 2,000 of them and tested on the top 300 or fewer.")

_FULL = {"canvas": 96, "min_digits": 1, "max_digits": 5, "min_digit": 14, "max_digit": 48,
         "n_train": 4000, "n_val": 400, "n_test": 1000, "epochs": 20, "batch_size": 16,
         "lr": 0.002, "channels": [16, 32, 64], "anchor_scales": [12.0, 20.0, 32.0, 48.0],
         "aspect_ratios": [1.0, 2.0], "pos_iou": 0.7, "neg_iou": 0.3, "anchors_per_image": 128,
         "box_weight": 1.0, "nms_iou": 0.7, "proposal_counts": [1, 2, 3, 5, 10, 20, 50, 100, 300],
         "compare_at": 10, "nms_thresholds": [0.3, 0.5, 0.6, 0.7, 0.8, 0.9],
         "nms_sizes": [100, 300, 1000, 3000, 10000, 20000], "nms_repeats": 5, "seeds": 5,
         "seed": 0, "device": "cpu"}
_STANDARD = {**_FULL, "canvas": 64, "max_digits": 4, "min_digit": 12, "max_digit": 32,
             "n_train": 2000, "n_val": 200, "n_test": 400, "epochs": 20,
             "channels": [16, 32, 32], "anchor_scales": [12.0, 20.0, 32.0],
             "anchors_per_image": 64, "nms_sizes": [100, 300, 1000, 3000, 6000],
             "nms_repeats": 3, "seeds": 5}
_QUICK = {**_STANDARD, "n_train": 300, "n_val": 40, "n_test": 50, "epochs": 4,
          "proposal_counts": [1, 2, 5, 10, 20, 50, 100],
          "nms_thresholds": [0.5, 0.7, 0.9], "nms_sizes": [100, 300, 1000, 2000],
          "nms_repeats": 2, "seeds": 2}


# -- data -----------------------------------------------------------------------------------------
def ink_crop(img: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """The smallest rectangle of a (28, 28) digit holding every pixel > threshold."""
    rows, cols = np.flatnonzero((img > threshold).any(1)), np.flatnonzero((img > threshold).any(0))
    if rows.size == 0:
        return img
    return img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """img (h, w) resampled to (out_h, out_w) by bilinear interpolation at pixel centres."""
    h, w = img.shape
    ys = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def make_canvases(digits: np.ndarray, n: int, config: Dict[str, Any], gen: np.random.Generator
                  ) -> Tuple[np.ndarray, List[np.ndarray]]:
    """``n`` canvases (n, 1, S, S) float32 and their boxes, a list of (k, 4) float arrays.

    digits: (M, 1, 28, 28) images to draw from (with replacement). A digit is cropped to its
    ink, resized to a random height in [min_digit, max_digit] (width in proportion, capped at
    the canvas) and pasted (pixel-wise max) at a random place overlapping no earlier box by
    IoU > 0.1 (up to 20 tries, else the digit is skipped; every canvas keeps >= 1 digit).
    """
    size = config["canvas"]
    images = np.zeros((n, 1, size, size), dtype=np.float32)
    boxes: List[np.ndarray] = []
    for i in range(n):
        placed: List[List[float]] = []
        for _ in range(int(gen.integers(config["min_digits"], config["max_digits"] + 1))):
            crop = ink_crop(digits[int(gen.integers(len(digits))), 0])
            h = int(gen.integers(config["min_digit"], config["max_digit"] + 1))
            w = int(min(size, max(2, round(crop.shape[1] * h / crop.shape[0]))))
            for _ in range(20):
                x, y = int(gen.integers(0, size - w + 1)), int(gen.integers(0, size - h + 1))
                box = [x, y, x + w, y + h]
                overlap = (box_iou(np.array([box], float), np.array(placed, float)).max()
                           if placed else 0.0)
                if overlap <= 0.1:
                    patch = resize_bilinear(crop, h, w)
                    images[i, 0, y:y + h, x:x + w] = np.maximum(images[i, 0, y:y + h, x:x + w],
                                                                patch)
                    placed.append(box)
                    break
        boxes.append(np.array(placed, dtype=np.float64).reshape(-1, 4))
    return images, boxes


def build_sets(config: Dict[str, Any], seed: int) -> Dict[str, Tuple[np.ndarray, List]]:
    """Train / val / test canvases for one seed. Train and val draw from disjoint halves-by-
    size of a seeded permutation of the mnist10k training digits; test from the test digits."""
    X, _ = load("mnist10k", "train")
    Xt, _ = load("mnist10k", "test")
    gen = np.random.default_rng([seed, 1])
    perm = gen.permutation(len(X))
    n_val_digits = max(1, len(X) // 10)
    return {"train": make_canvases(X[perm[n_val_digits:]], config["n_train"], config, gen),
            "val": make_canvases(X[perm[:n_val_digits]], config["n_val"], config, gen),
            "test": make_canvases(Xt, config["n_test"], config, np.random.default_rng([seed, 2]))}


# -- model and its outputs -------------------------------------------------------------------------
def n_anchors(config: Dict[str, Any]) -> int:
    """Anchors per feature cell: scales x aspect ratios."""
    return len(config["anchor_scales"]) * len(config["aspect_ratios"])


def rpn_model(config: Dict[str, Any], rng) -> Sequential:
    """x (N, 1, S, S) -> (N, 5A, S/8, S/8): channels [0, A) are the anchors' objectness logits,
    [A, 5A) their deltas as (A, 4) per cell (torchvision's layout)."""
    c1, c2, c3 = (int(c) for c in config["channels"])
    gen = np.random.default_rng(rng)
    return Sequential(Conv2d(1, c1, 3, stride=2, padding=1, rng=gen), ReLU(),
                      Conv2d(c1, c2, 3, stride=2, padding=1, rng=gen), ReLU(),
                      Conv2d(c2, c3, 3, stride=2, padding=1, rng=gen), ReLU(),
                      Conv2d(c3, c3, 3, padding=1, rng=gen), ReLU(),      # the sliding window
                      Conv2d(c3, 5 * n_anchors(config), 1, rng=gen))


def split_outputs(y: np.ndarray, a: int) -> Tuple[np.ndarray, np.ndarray]:
    """(N, 5A, H, W) -> logits (N, H*W*A) and deltas (N, H*W*A, 4), rows in the order of
    :func:`mlcvlab.vision.generate_anchors` (cell row by row, then anchor)."""
    n, _, h, w = y.shape
    logits = y[:, :a].transpose(0, 2, 3, 1).reshape(n, h * w * a)
    deltas = y[:, a:].reshape(n, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * a, 4)
    return logits, deltas


def merge_grads(dlogits: np.ndarray, ddeltas: np.ndarray, h: int, w: int, a: int) -> np.ndarray:
    """The inverse of :func:`split_outputs` for gradients: back to (N, 5A, H, W)."""
    n = dlogits.shape[0]
    dy = np.empty((n, 5 * a, h, w), dtype=dlogits.dtype)
    dy[:, :a] = dlogits.reshape(n, h, w, a).transpose(0, 3, 1, 2)
    dy[:, a:] = ddeltas.reshape(n, h, w, a, 4).transpose(0, 3, 4, 1, 2).reshape(n, 4 * a, h, w)
    return dy


# -- the loss -------------------------------------------------------------------------------------
class SmoothL1Loss:
    """Smooth L1 (Huber with slope 1): 0.5 x^2 / beta for |x| < beta, else |x| - 0.5 beta,
    summed over all elements and divided by ``normalizer`` (torchvision's RPN: beta = 1/9,
    divided by the number of sampled anchors). ``backward()`` gives dL/dpred."""

    def __init__(self, beta: float = 1.0 / 9):
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"SmoothL1Loss: beta must be a number > 0, got {beta!r}")
        self.beta = float(beta)
        self._grad = None

    def __call__(self, pred: np.ndarray, target: np.ndarray, normalizer: float) -> float:
        if pred.shape != target.shape:
            raise ValueError(f"SmoothL1Loss: pred {pred.shape} and target {target.shape} differ")
        if not normalizer > 0:
            raise ValueError(f"SmoothL1Loss: normalizer must be > 0, got {normalizer!r}")
        x = pred - target
        small = np.abs(x) < self.beta
        value = np.where(small, 0.5 * x * x / self.beta, np.abs(x) - 0.5 * self.beta).sum()
        self._grad = (np.where(small, x / self.beta, np.sign(x)) / normalizer).astype(pred.dtype)
        return float(value / normalizer)

    def backward(self) -> np.ndarray:
        if self._grad is None:
            raise RuntimeError("SmoothL1Loss.backward called before the loss was computed")
        return self._grad


# -- anchor labelling and sampling -----------------------------------------------------------------
def label_anchors(anchors: np.ndarray, gt: np.ndarray, pos_iou: float, neg_iou: float
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """labels (K,): 1 positive, 0 negative, -1 ignored; matched (K,): each anchor's best box.

    Positive: IoU >= pos_iou with some box, or among a box's best anchors (ties included,
    IoU > 0); negative: best IoU < neg_iou; the rest are ignored (Ren et al. 2015, Sec. 3.1.2).
    """
    labels = np.full(len(anchors), -1, dtype=np.int64)
    if len(gt) == 0:
        labels[:] = 0
        return labels, np.zeros(len(anchors), dtype=np.int64)
    iou = box_iou(anchors, gt)
    best, matched = iou.max(axis=1), iou.argmax(axis=1)
    labels[best < neg_iou] = 0
    labels[best >= pos_iou] = 1
    per_box = iou.max(axis=0)
    labels[((iou == per_box[None]) & (per_box[None] > 0)).any(axis=1)] = 1
    return labels, matched


def sample_anchors(labels: np.ndarray, n: int, gen: np.random.Generator
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Up to n // 2 positive and the rest negative anchor indices, drawn without replacement."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    pos = gen.choice(pos, min(len(pos), n // 2), replace=False)
    neg = gen.choice(neg, min(len(neg), n - len(pos)), replace=False)
    return pos, neg


def targets(sets_boxes: List[np.ndarray], anchors: np.ndarray, config: Dict[str, Any]):
    """Per image: anchor labels and the encoded deltas of each anchor's matched box."""
    out = []
    for gt in sets_boxes:
        labels, matched = label_anchors(anchors, gt, config["pos_iou"], config["neg_iou"])
        deltas = (encode_boxes(anchors, gt[matched]) if len(gt)
                  else np.zeros_like(anchors))
        out.append((labels, deltas.astype(np.float32)))
    return out


def rpn_loss(y: np.ndarray, batch_targets, config, gen: np.random.Generator,
             bce: BCEWithLogitsLoss, sl1: SmoothL1Loss) -> Tuple[float, float, np.ndarray]:
    """(objectness loss, box loss, dL/dy) of one batch's raw output y (N, 5A, H, W)."""
    a = n_anchors(config)
    n, _, h, w = y.shape
    logits, deltas = split_outputs(y, a)
    rows_p, cols_p, rows_n, cols_n = [], [], [], []
    for b, (labels, _) in enumerate(batch_targets):
        pos, neg = sample_anchors(labels, config["anchors_per_image"], gen)
        rows_p += [b] * len(pos)
        cols_p += pos.tolist()
        rows_n += [b] * len(neg)
        cols_n += neg.tolist()
    rows, cols = np.array(rows_p + rows_n, int), np.array(cols_p + cols_n, int)
    obj_target = np.r_[np.ones(len(rows_p)), np.zeros(len(rows_n))].astype(y.dtype)
    obj = bce(logits[rows, cols], obj_target)
    dlogits = np.zeros_like(logits)
    dlogits[rows, cols] = bce.backward()
    ddeltas = np.zeros_like(deltas)
    box = 0.0
    if rows_p:
        rp, cp = np.array(rows_p, int), np.array(cols_p, int)
        tgt = np.stack([batch_targets[r][1][c] for r, c in zip(rp, cp)])
        box = sl1(deltas[rp, cp], tgt, normalizer=len(rows))
        ddeltas[rp, cp] = config["box_weight"] * sl1.backward()
    return obj, box, merge_grads(dlogits, ddeltas, h, w, a)


# -- training and proposals ------------------------------------------------------------------------
def train(model, images: np.ndarray, tgts, val, anchors, config, gen: np.random.Generator,
          progress=None) -> List[Dict[str, float]]:
    """Adam for ``epochs`` epochs; per epoch the mean training loss and, on the validation
    canvases, the loss and the recall at ``compare_at`` proposals (a curve, not a selection)."""
    opt = Adam(model.parameters(), lr=config["lr"])
    bce, sl1 = BCEWithLogitsLoss(), SmoothL1Loss()
    model.set_input_grad(False)
    curve = []
    bs = config["batch_size"]
    for epoch in range(1, config["epochs"] + 1):
        model.train()
        order = gen.permutation(len(images))
        losses = []
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            opt.zero_grad()
            y = _host(model(_model_input(model, images[idx])))     # the loss is host code
            obj, box, dy = rpn_loss(y, [tgts[i] for i in idx], config, gen, bce, sl1)
            model.backward(_model_input(model, dy))                # back where the model is
            opt.step()
            losses.append(obj + config["box_weight"] * box)
        val_loss = evaluate_loss(model, val, anchors, config)
        val_recall = recall_table(proposals(model, val[0], anchors, config), val[1],
                                  [config["compare_at"]], config["nms_iou"])["pooled"][0]
        curve.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                      "val_loss": val_loss, "val_recall": val_recall})
    model.eval()
    return curve


def evaluate_loss(model, data, anchors, config) -> float:
    """The RPN loss on canvases with a fixed anchor sample (seeded), in evaluation mode."""
    images, boxes, tgts = data
    model.eval()
    gen = np.random.default_rng(12345)
    total = 0.0
    for start in range(0, len(images), 64):
        y = _host(model(_model_input(model, images[start:start + 64])))
        obj, box, _ = rpn_loss(y, tgts[start:start + 64], config, gen, BCEWithLogitsLoss(),
                               SmoothL1Loss())
        total += (obj + config["box_weight"] * box) * len(y)
    return float(total / len(images))


def proposals(model, images: np.ndarray, anchors: np.ndarray, config: Dict[str, Any]
              ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Per image, every anchor's decoded box clipped to the canvas, boxes under 1 px removed:
    (boxes (P, 4), objectness logits (P,)), unsorted and before NMS."""
    model.eval()
    size = config["canvas"]
    out = []
    for start in range(0, len(images), 64):
        y = _host(model(_model_input(model, images[start:start + 64])))
        logits, deltas = split_outputs(y, n_anchors(config))
        for lg, dl in zip(logits, deltas):
            boxes = clip_boxes(decode_boxes(anchors, dl.astype(np.float64)), size, size)
            keep = remove_small_boxes(boxes, 1.0)
            out.append((boxes[keep], lg[keep].astype(np.float64)))
    return out


def after_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, top=None) -> np.ndarray:
    """The proposals NMS keeps at ``iou``, best first (only the first ``top`` when given)."""
    return boxes[nms(boxes, scores, iou, max_kept=top)]


def recall_table(props, gts: List[np.ndarray], counts: Sequence[int], nms_iou
                 ) -> Dict[str, Any]:
    """Recall of the true boxes at IoU >= 0.5 by the top-k proposals after NMS, for each k
    (nms_iou None: the top k by score without NMS).

    Returns pooled (matched boxes / all boxes) per k and per_image (n_images, len(counts)).
    """
    matched = np.zeros(len(counts))
    total = 0
    per_image = np.zeros((len(gts), len(counts)))
    for i, ((boxes, scores), gt) in enumerate(zip(props, gts)):
        if nms_iou is None:
            kept = boxes[vision.score_order(scores)[:int(max(counts))]]
        else:
            kept = after_nms(boxes, scores, nms_iou, top=int(max(counts)))
        if len(kept) == 0:
            hits = np.zeros((len(gt), len(counts)), bool)
        else:
            best = np.maximum.accumulate(box_iou(gt, kept), axis=1)    # (G, P): best of top-k
            cols = np.minimum(np.asarray(counts), len(kept)) - 1
            hits = best[:, cols] >= 0.5
        matched += hits.sum(axis=0)
        total += len(gt)
        per_image[i] = hits.mean(axis=0) if len(gt) else 1.0
    return {"pooled": (matched / max(total, 1)).tolist(), "per_image": per_image,
            "n_boxes": total}


def kept_counts(props, thresholds: Sequence[float]) -> np.ndarray:
    """(n_images, len(thresholds)): how many proposals NMS keeps at each IoU threshold."""
    return np.array([[len(nms(b, s, t)) for t in thresholds] for b, s in props], dtype=float)


# -- NMS timing -----------------------------------------------------------------------------------
def nms_timing(sizes: Sequence[int], repeats: int, iou: float, seed: int) -> List[Dict[str, Any]]:
    """CPU and wall seconds of :func:`nms` on n random proposal-like boxes (centres uniform on an
    800x800 image, sides 16-256 px, uniform scores), the mean of ``repeats`` calls per size."""
    gen = np.random.default_rng([seed, 3])
    rows = []
    for n in sizes:
        c = gen.uniform(0, 800, (n, 2))
        wh = gen.uniform(16, 256, (n, 2))
        boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
        scores = gen.random(n)
        cpu, wall = [], []
        for _ in range(repeats):
            t0, w0 = time.process_time(), time.perf_counter()
            kept = nms(boxes, scores, iou)
            cpu.append(time.process_time() - t0)
            wall.append(time.perf_counter() - w0)
        method = "IoU matrix" if n <= vision.MATRIX_NMS_MAX else "one IoU row per kept box"
        rows.append({"boxes": int(n), "method": method, "kept": int(len(kept)),
                     "cpu_s": float(np.mean(cpu)),
                     "wall_s": float(np.mean(wall)), "repeats": int(repeats)})
    return rows


# -- one seed --------------------------------------------------------------------------------------
def run_seed(config: Dict[str, Any], seed: int, progress=None) -> Dict[str, Any]:
    """Build the canvases, train the RPN and measure both arms on the test canvases."""
    sets = build_sets(config, seed)
    feat = config["canvas"] // STRIDE
    anchors = generate_anchors((feat, feat), STRIDE, config["anchor_scales"],
                               config["aspect_ratios"])
    data = {k: (imgs, boxes, targets(boxes, anchors, config)) for k, (imgs, boxes) in sets.items()}
    device = config.get("device", "cpu")
    model = rpn_model(config, np.random.default_rng([seed, 20])).to(device)
    initial = model.state_dict()                    # host copies, wherever the model is
    t0, w0 = time.process_time(), time.perf_counter()
    curve = train(model, data["train"][0], data["train"][2], data["val"], anchors, config,
                  np.random.default_rng([seed, 21]))
    train_cpu, train_wall = time.process_time() - t0, time.perf_counter() - w0
    untrained = rpn_model(config, 0)
    untrained.load_state_dict(initial)
    untrained.to(device)
    test_imgs, test_boxes, _ = data["test"]
    out = {"seed": seed, "curve": curve, "train_cpu_s": train_cpu, "train_wall_s": train_wall,
           "n_test_boxes": int(sum(len(b) for b in test_boxes)), "arms": {}}
    for arm, net in zip(ARMS, (model, untrained)):
        props = proposals(net, test_imgs, anchors, config)
        rec = recall_table(props, test_boxes, config["proposal_counts"], config["nms_iou"])
        out["arms"][arm] = {"recall": rec["pooled"], "recall_per_image": rec["per_image"],
                            "kept": kept_counts(props, config["nms_thresholds"]),
                            "n_proposals": float(np.mean([len(b) for b, _ in props]))}
        if arm == ARMS[0]:
            plain = recall_table(props, test_boxes, config["proposal_counts"], None)
            out["arms"][NO_NMS] = {"recall": plain["pooled"],
                                   "recall_per_image": plain["per_image"]}
            out["example"] = {"image": test_imgs[0, 0], "gt": test_boxes[0], "props": props[0],
                              "anchors": anchors}
    out["anchors_total"] = len(anchors)
    out["positives_per_image"] = float(np.mean([(t[0] == 1).sum() for t in data["train"][2]]))
    out["digits_per_image"] = float(np.mean([len(b) for b in sets["train"][1]]))
    return out


# -- summary --------------------------------------------------------------------------------------
def _ci(values: Sequence[float]) -> Dict[str, Any]:
    return stats.summarize(values)


def _fmt_ci(s: Dict[str, Any], digits: int = 3, low: float = 0.0, high: float = math.inf) -> str:
    """"[lo, hi]" of a summary's t-interval, clipped to the quantity's range [low, high]."""
    lo, hi = s["ci95"]
    if lo is None:
        return "n/a (1 value)"
    return f"[{max(lo, low):.{digits}f}, {min(hi, high):.{digits}f}]"


def _clip(ci: Sequence, low: float, high: float) -> List:
    """A [lo, hi] interval clipped to [low, high]; [None, None] stays so."""
    return [None, None] if ci[0] is None else [max(ci[0], low), min(ci[1], high)]


def summarize(config: Dict[str, Any], runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Tables, comparisons and headline numbers from the per-seed runs."""
    counts, thresholds = config["proposal_counts"], config["nms_thresholds"]
    recall_rows, kept_rows, headline = [], [], {}
    for arm in RECALL_ARMS:
        headline[arm] = [float(np.mean([r["arms"][arm]["recall"][j] for r in runs]))
                         for j in range(len(counts))]
        for j, k in enumerate(counts):
            by_seed = [r["arms"][arm]["recall"][j] for r in runs]
            images = np.concatenate([r["arms"][arm]["recall_per_image"][:, j] for r in runs])
            s, si = _ci(by_seed), _ci(images)
            recall_rows.append({"arm": arm, "proposals kept": int(k), "recall": s["mean"],
                                "95% CI over seeds": _fmt_ci(s, high=1.0),
                                "95% CI over images": _fmt_ci(si, high=1.0), "seeds": s["n"],
                                "images": si["n"], "ci95_seeds": _clip(s["ci95"], 0.0, 1.0)})
    for arm in ARMS:
        for j, t in enumerate(thresholds):
            per_img = np.concatenate([r["arms"][arm]["kept"][:, j] for r in runs])
            s, si = _ci([r["arms"][arm]["kept"][:, j].mean() for r in runs]), _ci(per_img)
            kept_rows.append({"arm": arm, "NMS IoU threshold": float(t),
                              "proposals before NMS": float(np.mean(
                                  [r["arms"][arm]["n_proposals"] for r in runs])),
                              "proposals kept per image": s["mean"],
                              "95% CI over seeds": _fmt_ci(s, 1),
                              "95% CI over images": _fmt_ci(si, 1)})
    j = counts.index(config["compare_at"])
    k, t = config["compare_at"], config["nms_iou"]

    def recalls(arm):
        return [r["arms"][arm]["recall"][j] for r in runs]

    comp = stats.compare(ARMS[0], recalls(ARMS[0]), ARMS[1], recalls(ARMS[1]),
                         f"test recall at IoU >= 0.5 of the top {k} proposals after NMS at IoU "
                         f"{t}", higher_is_better=True)
    comp_nms = stats.compare(f"{ARMS[0]} with NMS at IoU {t}", recalls(ARMS[0]), NO_NMS,
                             recalls(NO_NMS), f"test recall at IoU >= 0.5 of the top {k} "
                             "proposals", higher_is_better=True)
    t_col = thresholds.index(t)
    kept_at = float(np.mean([r["arms"][ARMS[0]]["kept"][:, t_col].mean() for r in runs]))
    before = float(np.mean([r["arms"][ARMS[0]]["n_proposals"] for r in runs]))

    def needed(arm: str, target: float):
        hit = [k for k, r in zip(counts, headline[arm]) if r >= target]
        return hit[0] if hit else f"more than {counts[-1]}"

    results = {"comparisons": [comp, comp_nms], "recall_rows": recall_rows, "kept_rows": kept_rows,
               "recall_by_arm": headline, "verdict": comp["verdict"],
               "trained_recall": comp["a_mean"], "untrained_recall": comp["b_mean"],
               "no_nms_recall": comp_nms["b_mean"], "nms_verdict": comp_nms["verdict"],
               "sentence_nms": stats.sentence(comp_nms), "kept_at_nms_iou": kept_at,
               "kept_fraction": kept_at / before, "no_nms_needed_90": needed(NO_NMS, 0.9),
               "trained_needed_90": needed(ARMS[0], 0.9),
               "untrained_needed_90": needed(ARMS[1], 0.9),
               "trained_recall_max": headline[ARMS[0]][-1],
               "untrained_recall_max": headline[ARMS[1]][-1]}
    return results


def _check_config(config: Dict[str, Any]) -> None:
    """A ValueError naming the first bad config value, before any work."""
    def bad(key, rule):
        raise ValueError(f"region-proposals: {key} must be {rule}, got {config[key]!r}")

    for key, low in (("canvas", 16), ("min_digits", 1), ("min_digit", 4), ("n_train", 1),
                     ("n_val", 1), ("n_test", 1), ("epochs", 1), ("batch_size", 1),
                     ("anchors_per_image", 2), ("nms_repeats", 1)):
        if not isinstance(config[key], (int, np.integer)) or config[key] < low:
            bad(key, f"an integer >= {low}")
    if config["canvas"] % STRIDE:
        bad("canvas", f"a multiple of the feature stride {STRIDE}")
    if config["max_digits"] < config["min_digits"]:
        bad("max_digits", f"an integer >= min_digits ({config['min_digits']})")
    if not config["min_digit"] <= config["max_digit"] <= config["canvas"]:
        bad("max_digit", f"an integer in [min_digit, canvas] = [{config['min_digit']}, "
                         f"{config['canvas']}]")
    for key in ("lr", "box_weight"):
        v = config[key]
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            bad(key, "a finite number > 0")
    for key in ("pos_iou", "neg_iou", "nms_iou"):
        v = config[key]
        if not (isinstance(v, (int, float)) and 0 < v <= 1):
            bad(key, "a number in (0, 1]")
    if config["neg_iou"] > config["pos_iou"]:
        bad("neg_iou", f"<= pos_iou ({config['pos_iou']})")
    ch = config["channels"]
    if not (isinstance(ch, list) and len(ch) == 3 and all(isinstance(c, int) and c >= 1
                                                          for c in ch)):
        bad("channels", "a list of 3 integers >= 1")
    for key in ("anchor_scales", "aspect_ratios"):
        v = config[key]
        if not (isinstance(v, list) and v and all(isinstance(x, (int, float)) and
                                                  math.isfinite(x) and x > 0 for x in v)):
            bad(key, "a non-empty list of numbers > 0")
    for key in ("proposal_counts", "nms_sizes"):
        v = config[key]
        if not (isinstance(v, list) and v and all(isinstance(x, int) and x >= 1 for x in v)):
            bad(key, "a non-empty list of integers >= 1")
    if sorted(config["proposal_counts"]) != config["proposal_counts"]:
        bad("proposal_counts", "an increasing list")
    t = config["nms_thresholds"]
    if not (isinstance(t, list) and t and all(isinstance(x, (int, float)) and 0 <= x <= 1
                                              for x in t)):
        bad("nms_thresholds", "a non-empty list of numbers in [0, 1]")
    if config["nms_iou"] not in t:
        bad("nms_thresholds", f"a list that includes nms_iou ({config['nms_iou']})")
    if config["compare_at"] not in config["proposal_counts"]:
        bad("compare_at", f"one of proposal_counts {config['proposal_counts']}")
    try:
        stats.seeds_of(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"region-proposals: seeds: {err}") from None


# -- figures ---------------------------------------------------------------------------------------
def _draw(ax, boxes, colour, lw=1.0, alpha=1.0, ls="-"):
    import matplotlib.patches as patches

    for x1, y1, x2, y2 in boxes:
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                                       linewidth=lw, alpha=alpha, linestyle=ls))


def example_figure(rep: Report, example: Dict[str, Any], config: Dict[str, Any]) -> None:
    """Anchors, top proposals before NMS and the proposals kept after NMS, on one test canvas."""
    fig, axes = new_figure(ncols=3, figsize=(13, 4.6))
    img, gt, anchors = example["image"], example["gt"], example["anchors"]
    boxes, scores = example["props"]
    size, a = config["canvas"], n_anchors(config)
    feat = size // STRIDE
    centre_cell = (feat // 2) * feat + feat // 2
    top = np.argsort(-scores, kind="stable")[:50]
    kept = after_nms(boxes, scores, config["nms_iou"])[:config["compare_at"]]
    panels = [(f"{a} anchors at one cell (of {len(anchors)}: {a} at each of {feat}x{feat} "
               "centres)", anchors[centre_cell * a:(centre_cell + 1) * a], "tab:orange"),
              ("top 50 proposals by objectness, before NMS", boxes[top], "tab:blue"),
              (f"top {len(kept)} kept after NMS at IoU {config['nms_iou']}", kept, "tab:blue")]
    for ax, (title, shown, colour) in zip(axes, panels):
        ax.imshow(img, cmap="gray", extent=(0, size, size, 0))
        if shown is panels[0][1]:
            cx = (anchors[::a, 0] + anchors[::a, 2]) / 2
            cy = (anchors[::a, 1] + anchors[::a, 3]) / 2
            ax.plot(cx, cy, ".", color="tab:orange", markersize=3, label="anchor centres")
        _draw(ax, shown, colour, alpha=0.8, lw=0.8)
        _draw(ax, gt, "tab:green", lw=2.0, ls="--")
        ax.plot([], [], color=colour, label="anchors" if colour == "tab:orange" else "proposals")
        ax.plot([], [], "--", color="tab:green", label="true boxes")
        margin = 0.15 * size if colour == "tab:orange" else 0.0   # anchors may cross the border
        ax.set_xlim(-margin, size + margin)
        ax.set_ylim(size + margin, -margin)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    fig.suptitle("Region proposals on the first test canvas (trained RPN, first seed)")
    rep.figure("example_proposals", fig, "The first test canvas of the first seed: left, the "
               "anchors of one cell near the centre and every cell's centre; "
               "middle, the 50 best-scored proposals before NMS; right, the top "
               "{compare_at} left after NMS. Dashed green: the true boxes.")


def curves_figure(rep: Report, results: Dict[str, Any], config: Dict[str, Any]) -> None:
    """Recall vs proposals kept, and proposals kept vs the NMS threshold, per arm."""
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(12, 4.4))
    counts = config["proposal_counts"]
    for arm in RECALL_ARMS:
        rows = [r for r in results["recall_rows"] if r["arm"] == arm]
        ax1.plot(counts, [r["recall"] for r in rows], "o-", color=COLOURS[arm], label=arm)
        lo = [r["ci95_seeds"][0] for r in rows]
        if None not in lo:
            ax1.fill_between(counts, lo, [r["ci95_seeds"][1] for r in rows],
                             color=COLOURS[arm], alpha=0.2)
        krows = [r for r in results["kept_rows"] if r["arm"] == arm]
        if not krows:
            continue
        ax2.plot([r["NMS IoU threshold"] for r in krows],
                 [r["proposals kept per image"] for r in krows], "o-", color=COLOURS[arm],
                 label=arm)
    ax1.set_xscale("log")
    ax1.set_xlabel("proposals kept after NMS (top k, log scale)")
    ax1.set_ylabel("recall of true boxes at IoU >= 0.5")
    ax1.set_ylim(0, 1.02)
    ax1.set_title("Recall vs number of proposals (band: 95% CI over seeds)")
    ax1.legend()
    ax2.axhline(results["anchors_total"], color="grey", ls=":", label="anchors (upper bound)")
    ax2.set_xlabel("NMS IoU threshold")
    ax2.set_ylabel("proposals kept per image")
    ax2.set_ylim(bottom=0)
    ax2.set_title("Proposals NMS keeps vs its IoU threshold")
    ax2.legend()
    rep.figure("recall_and_kept", fig, "Left: test recall against the number of proposals "
               "kept (mean over {n_seeds} seed(s); band = 95% interval over seeds when there "
               "are >= 2). Right: proposals kept per test canvas against the NMS threshold "
               "(mean).")


def timing_figure(rep: Report, rows: List[Dict[str, Any]]) -> None:
    fig, ax = new_figure(figsize=(6, 4.2))
    n = [r["boxes"] for r in rows]
    ax.plot(n, [r["cpu_s"] for r in rows], "o-", color="tab:purple", label="CPU seconds")
    ax.plot(n, [r["wall_s"] for r in rows], "s--", color="tab:gray", label="wall seconds")
    if n[0] <= vision.MATRIX_NMS_MAX < n[-1]:
        ax.axvline(vision.MATRIX_NMS_MAX, color="black", ls=":", lw=0.8,
                   label=f"above {vision.MATRIX_NMS_MAX}: one IoU row per kept box")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("boxes given to NMS (log scale)")
    ax.set_ylabel("seconds per nms() call (log scale)")
    ax.set_title("Time of mlcvlab.vision.nms vs the number of boxes")
    ax.legend()
    rep.figure("nms_time", fig, "CPU and wall seconds of one nms() call at IoU {nms_iou} on "
               "random proposal-like boxes (mean of {nms_repeats} calls).")


def curve_figure(rep: Report, runs: List[Dict[str, Any]]) -> None:
    """Training and validation loss per epoch, and the validation recall (every seed)."""
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(12, 4.2))
    for r in runs:
        ep = [c["epoch"] for c in r["curve"]]
        first = r is runs[0]
        ax1.plot(ep, [c["train_loss"] for c in r["curve"]], "-", color="tab:blue", alpha=0.7,
                 label="training loss" if first else None)
        ax1.plot(ep, [c["val_loss"] for c in r["curve"]], "--", color="tab:red", alpha=0.7,
                 label="validation loss" if first else None)
        ax2.plot(ep, [c["val_recall"] for c in r["curve"]], "-", color="tab:blue", alpha=0.7,
                 label="trained RPN (validation)" if first else None)
    for ax in (ax1, ax2):
        ax.set_xticks(range(1, len(runs[0]["curve"]) + 1))
        ax.set_xlabel("epoch")
        ax.legend()
    ax1.set_ylabel("RPN loss (objectness + box)")
    ax1.set_title("RPN loss per epoch (one line per seed)")
    ax2.set_ylabel("validation recall at IoU >= 0.5")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("Validation recall of the top {} proposals after NMS".format(
        rep.results["compare_at"]))
    rep.figure("training_curve", fig, "Left: RPN loss per epoch on the training canvases (mean "
               "over the epoch's batches) and on the validation canvases (end of epoch). Right: "
               "validation recall of the top {compare_at} proposals after NMS. Every seed; a "
               "curve only, nothing is selected from it.")


# -- the lab ---------------------------------------------------------------------------------------
@lab(name="region-proposals",
     study="Ren et al. (2015) Faster R-CNN: a Region Proposal Network with anchors and NMS on "
           "synthetic MNIST-digit canvases; recall vs proposals kept, trained vs untrained",
     quick=_QUICK, standard=_STANDARD, full=_FULL,
     expected_seconds={"quick": 20, "standard": 480, "full": 4500})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Every seed's runs, then the summary, the figures and the report."""
    _check_config(config)
    seeds = stats.seeds_of(config)
    runs = [run_seed(config, s) for s in progress(seeds, desc="seeds", total=len(seeds))]
    results = summarize(config, runs)
    timing = nms_timing(config["nms_sizes"], config["nms_repeats"], config["nms_iou"], seeds[0])
    r0 = runs[0]
    results.update({
        "n_seeds": len(seeds), "seeds": seeds, "seed_text": ", ".join(map(str, seeds)),
        "timing_rows": timing, "matrix_max": vision.MATRIX_NMS_MAX,
        "anchors_total": r0["anchors_total"],
        "anchors_per_cell": n_anchors(config), "feature": config["canvas"] // STRIDE,
        "positives_per_image": float(np.mean([r["positives_per_image"] for r in runs])),
        "digits_per_image": float(np.mean([r["digits_per_image"] for r in runs])),
        "n_test_boxes": int(sum(r["n_test_boxes"] for r in runs)),
        "train_cpu_s": float(np.mean([r["train_cpu_s"] for r in runs])),
        "train_wall_s": float(np.mean([r["train_wall_s"] for r in runs])),
        "params": rpn_model(config, 0).num_parameters(),
        "curves": {str(r["seed"]): r["curve"] for r in runs},
        "proposals_before_nms": float(np.mean([r["arms"][ARMS[0]]["n_proposals"] for r in runs])),
        "paper": PAPER, "sentence": stats.sentence(results["comparisons"][0]),
        "counts_text": ", ".join(map(str, config["proposal_counts"])),
        **{k: config[k] for k in ("canvas", "compare_at", "nms_iou", "nms_repeats", "epochs",
                                  "n_train", "n_val", "n_test", "lr", "batch_size",
                                  "anchors_per_image", "pos_iou", "neg_iou")}})
    write_report(out_dir, config, results, runs)
    return results


def write_report(out_dir, config, results, runs) -> None:
    rep = Report(out_dir, "Region proposals: Faster R-CNN's RPN and non-maximum suppression",
                 results)
    rep.setup(config)
    rep.text("Data: synthetic {canvas}x{canvas} canvases with {digits_per_image:.2f} MNIST "
             "digits each on average (from the embedded mnist10k set: training and validation "
             "canvases from disjoint digits of its training split, test canvases from its test "
             "split), each digit cropped to its ink, resized and pasted with its box. "
             "{n_train} training, {n_val} validation and {n_test} test canvases per seed; "
             "seeds {seed_text}. RPN: three 3x3 stride-2 convolutions, a 3x3 sliding-window "
             "conv and a 1x1 conv giving {anchors_per_cell} anchors' objectness logits and box "
             "deltas per cell of the {feature}x{feature} feature map ({anchors_total} anchors "
             "per canvas, {params:,} parameters). Anchors positive at IoU >= {pos_iou} (or a "
             "box's best), negative below {neg_iou}; {positives_per_image:.1f} positive anchors "
             "per training canvas on average; {anchors_per_image} anchors sampled per canvas "
             "per step, at most half positive. Adam, lr {lr}, batch {batch_size}, {epochs} "
             "epochs, no early stopping; training took " + (
                 "{train_cpu_s:.1f} CPU s ({train_wall_s:.1f} s wall)"
                 if timing_clock(config) == "cpu" else
                 "{train_wall_s:.1f} s wall on the device ({train_cpu_s:.1f} CPU s, the host's "
                 "share: the anchor sampling and the losses run there)") + " per seed. "
             "The untrained arm is the same network at "
             "its initial weights (the same seed), so the arms are paired by seed. The "
             "validation canvases only draw the training curve; nothing is selected on the "
             "test canvases, which are evaluated once at the end.")
    rep.text("Proposals: every anchor decoded with its deltas (the Faster R-CNN "
             "parameterization, dw/dh clamped at log(1000/16)), clipped to the canvas, boxes "
             "under 1 px dropped ({proposals_before_nms:.0f} per canvas on average), then "
             "greedy NMS (mlcvlab.vision.nms) at IoU {nms_iou}, best objectness first.")
    example_figure(rep, runs[0]["example"], config)
    rep.section("Recall vs the number of proposals")
    rep.table("recall_vs_proposals", results["recall_rows"],
              "Test recall of the true boxes at IoU >= 0.5 by the top k proposals after NMS at "
              "IoU {nms_iou} ({n_test_boxes} true boxes over all seeds). Intervals: 95% t-"
              "interval over seeds (per-seed recall pooled over its boxes) and over test "
              "canvases (per-canvas recall, all seeds together), clipped to [0, 1]",
              columns=["arm", "proposals kept", "recall", "95% CI over seeds",
                       "95% CI over images", "seeds", "images"])
    rep.section("Proposals kept vs the NMS threshold")
    rep.table("kept_vs_threshold", results["kept_rows"], "Proposals NMS keeps per test canvas "
              "against its IoU threshold (mean; 95% t-intervals over seeds and over canvases)")
    curves_figure(rep, results, config)
    rep.section("NMS time vs the number of boxes")
    rep.table("nms_time", results["timing_rows"], "One nms() call on random proposal-like "
              "boxes (800x800 image, sides 16-256 px) at IoU {nms_iou}: CPU seconds with wall "
              "seconds beside (mean of {nms_repeats} calls). Up to {matrix_max} boxes nms() "
              "computes the whole IoU matrix once; above, one IoU row per kept box")
    timing_figure(rep, results["timing_rows"])
    rep.section("Training curve")
    curve_figure(rep, runs)
    rep.comparisons(results["comparisons"], heading="Comparisons (paired by seed: the same "
                    "canvases and initial weights)")
    rep.section("The paper's numbers next to this run's")
    rep.text("From the paper (not measured here): {paper}")
    rep.text("This run (means over seeds): NMS at IoU {nms_iou} keeps "
             "{kept_at_nms_iou:.0f} of the trained RPN's {proposals_before_nms:.0f} proposals "
             "per canvas ({kept_fraction:.0%}; the paper's ~2,000 of ~20,000 anchors is about "
             "10%). The trained RPN reaches recall >= 0.9 with {trained_needed_90} proposal(s) "
             "after NMS, without NMS with {no_nms_needed_90}, and the untrained RPN with "
             "{untrained_needed_90} (the counts tried are {counts_text}); with the largest "
             "count the trained and untrained recalls are {trained_recall_max:.3f} and "
             "{untrained_recall_max:.3f}. A {canvas}x{canvas} canvas with about "
             "{digits_per_image:.1f} objects has {anchors_total} anchors in all; next to the "
             "paper's 2,000 proposals (300 at test time), the count this run needs for recall "
             ">= 0.9 is the trained RPN's {trained_needed_90} above.")
    rep.conclusions(["{sentence}", "{sentence_nms}",
                     "Trained RPN: recall {trained_recall:.3f} with the top {compare_at} "
                     "proposals after NMS, {no_nms_recall:.3f} without NMS; untrained "
                     "(random-init) RPN: {untrained_recall:.3f} (means over {n_seeds} seed(s)); "
                     "verdicts: {verdict} (trained vs untrained), {nms_verdict} (with vs "
                     "without NMS)."])
    rep.explanation("NMS removes proposals that mostly cover an object already covered by a "
                    "better-scored proposal, so a fixed budget of kept proposals is spread over "
                    "more objects instead of repeating the best-scored one; a higher IoU "
                    "threshold suppresses less and keeps more near-duplicates. Training teaches "
                    "the objectness score to rank the anchors "
                    "on digits first and the deltas to tighten them; an untrained RPN ranks "
                    "proposals arbitrarily, so its recall grows only as the number kept "
                    "approaches all anchors.")
    rep.write()
