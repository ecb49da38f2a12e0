"""Boxes as the SSD fork of Caffe computes them (its ``util/bbox_util.cpp``), in NumPy.

A box is a row [xmin, ymin, xmax, ymax]; arrays of boxes have shape (K, 4). The arithmetic
is float32 in the fork's order of operations, so that thresholds (matching, NMS, overlap
for evaluation) decide as they decide there. No layer code: the detection layers
(protocaffe.layer_types.detection, .multibox) and the solver's mean average precision
(protocaffe.solver.detection) call these functions.

Where the fork differs from the usual definitions:
- a box with xmax < xmin or ymax < ymin has size 0;
- in pixel coordinates (``pixels=True``) widths and heights count +1 (a box from x 0 to 9 is
  10 wide), and two boxes that do not intersect still "intersect" in a 1 x 1 pixel;
- encoding with ``variance_in_target`` leaves the variances out; otherwise each coordinate
  is divided by its prior's variance.
"""
import numpy as np

from protocaffe.proto.forks import ssd_pb2

F32 = np.float32
CORNER, CENTER_SIZE, CORNER_SIZE = (ssd_pb2.PriorBoxParameter.CORNER, ssd_pb2.PriorBoxParameter.CENTER_SIZE,
                                    ssd_pb2.PriorBoxParameter.CORNER_SIZE)
BIPARTITE = ssd_pb2.MultiBoxLossParameter.BIPARTITE
NMS_BLOCK = 256
"""Candidates whose overlaps nms_fast computes at once."""


def sizes(boxes, pixels=False):
    """BBoxSize of each box: width * height ((w + 1) * (h + 1) in pixels); 0 for an inverted box."""
    boxes = np.asarray(boxes, F32)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if pixels:
        w, h = w + F32(1), h + F32(1)
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    return np.where(inverted, F32(0), w * h).astype(F32)


def jaccard(a, b, pixels=False):
    """JaccardOverlap of every box of ``a`` (A, 4) with every box of ``b`` (B, 4): (A, B) float32."""
    a, b = np.asarray(a, F32)[:, None, :], np.asarray(b, F32)[None, :, :]
    apart = (b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0]) | (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1])
    iw = np.where(apart, F32(0), np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
    ih = np.where(apart, F32(0), np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
    if pixels:
        iw, ih = iw + F32(1), ih + F32(1)
    inter = iw * ih
    union = sizes(a[:, 0], pixels)[:, None] + sizes(b[0], pixels)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0), inter / union, F32(0)).astype(F32)


def _centres(boxes):
    """(width, height, centre x, centre y) of boxes, as the fork computes them."""
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return w, h, (boxes[..., 0] + boxes[..., 2]) / F32(2), (boxes[..., 1] + boxes[..., 3]) / F32(2)


def encode(priors, variances, boxes, code_type, variance_in_target):
    """EncodeBBox: the offsets of ``boxes`` (K, 4) from their ``priors`` (K, 4) -> (K, 4).

    CORNER: corner differences; CORNER_SIZE: corner differences over the prior's size;
    CENTER_SIZE: centre differences over the prior's size and log size ratios. Each divided by
    the prior's variance unless ``variance_in_target``."""
    priors, boxes = np.asarray(priors, F32), np.asarray(boxes, F32)
    var = F32(1) if variance_in_target else np.asarray(variances, F32)
    if code_type == CENTER_SIZE:
        pw, ph, pcx, pcy = _centres(priors)
        bw, bh, bcx, bcy = _centres(boxes)
        with np.errstate(divide="ignore"):
            out = np.stack([(bcx - pcx) / pw, (bcy - pcy) / ph, np.log(bw / pw), np.log(bh / ph)], -1)
    else:
        out = boxes - priors
        if code_type == CORNER_SIZE:
            pw, ph = _centres(priors)[:2]
            out = out / np.stack([pw, ph, pw, ph], -1)
    return (out / var).astype(F32)


def decode(priors, variances, loc, code_type, variance_in_target):
    """DecodeBBox: predicted offsets ``loc`` (..., K, 4) applied to ``priors`` (K, 4) -> boxes (..., K, 4)."""
    priors, loc = np.asarray(priors, F32), np.asarray(loc, F32)
    d = loc if variance_in_target else np.asarray(variances, F32) * loc
    if code_type == CENTER_SIZE:
        pw, ph, pcx, pcy = _centres(priors)
        cx, cy = d[..., 0] * pw + pcx, d[..., 1] * ph + pcy
        w, h = np.exp(d[..., 2]) * pw, np.exp(d[..., 3]) * ph
        return np.stack([cx - w / F32(2), cy - h / F32(2), cx + w / F32(2), cy + h / F32(2)], -1).astype(F32)
    if code_type == CORNER_SIZE:
        pw, ph = _centres(priors)[:2]
        d = d * np.stack([pw, ph, pw, ph], -1)
    return (priors + d).astype(F32)


def is_cross_boundary(boxes):
    """Boxes with a coordinate outside [0, 1]."""
    boxes = np.asarray(boxes, F32)
    return ((boxes < 0) | (boxes > 1)).any(axis=-1)


def match(gt, preds, match_type, threshold, ignore_cross_boundary=False):
    """MatchBBox of ``preds`` (P, 4) to ``gt`` (G, 4) -> (indices (P,) int, overlaps (P,) float32).

    indices[p] is the gt row matched to p, -1 for none, -2 for a prediction ignored as crossing
    the image border. overlaps[p] is p's largest overlap with any gt (that of its match for a
    bipartite match). Bipartite first: repeatedly the largest remaining overlap above 1e-6
    pairs its prediction and gt (ties: lowest prediction, then lowest gt). PER_PREDICTION then
    gives each prediction still unmatched its best gt if that overlap reaches ``threshold``.
    """
    n = len(preds)
    indices, overlaps = np.full(n, -1, np.int64), np.zeros(n, F32)
    if not len(gt):
        return indices, overlaps
    if ignore_cross_boundary:
        indices[is_cross_boundary(preds)] = -2
    ov = jaccard(preds, gt)
    ov[indices == -2] = 0
    stored = ov > F32(1e-6)
    overlaps = np.where(stored, ov, F32(0)).max(axis=1).astype(F32)
    free = np.where(stored, ov, -np.inf)
    while True:
        free[indices != -1] = -np.inf
        flat = int(np.argmax(free))
        p, g = divmod(flat, free.shape[1])
        if free[p, g] == -np.inf:
            break
        indices[p], overlaps[p] = g, ov[p, g]
        free[:, g] = -np.inf
    if match_type != BIPARTITE:
        wanted = np.where(stored & (ov >= F32(threshold)), ov, -np.inf)
        best = wanted.argmax(axis=1)
        take = (indices == -1) & (wanted.max(axis=1) > -np.inf)
        indices[take] = best[take]
        overlaps[take] = ov[take, best[take]]
    return indices, overlaps


def _ranked(scores, threshold, top_k):
    """Indices of the scores above ``threshold`` by descending score (ties by index), at most top_k (-1: all)."""
    scores = np.asarray(scores, F32)
    above = np.nonzero(scores > F32(threshold))[0]
    order = above[np.argsort(-scores[above], kind="stable")]
    return order if top_k < 0 else order[:top_k]


def nms_fast(boxes, scores, score_threshold, nms_threshold, eta=1.0, top_k=-1):
    """ApplyNMSFast -> kept indices, best first.

    The top_k scores above ``score_threshold`` are visited by descending score; one is kept
    when its overlap with every box kept so far is at most the threshold. With eta < 1 the
    threshold is multiplied by eta after each kept box while it is above 0.5."""
    order = _ranked(scores, score_threshold, top_k)
    boxes = np.asarray(boxes, F32)[order]
    kept, limit = [], F32(nms_threshold)
    for start in range(0, len(order), NMS_BLOCK):  # overlaps with the earlier boxes, a block at a time
        block = jaccard(boxes[start:start + NMS_BLOCK], boxes[:start + NMS_BLOCK])
        for k, row in enumerate(block, start):
            if kept and (row[kept] > limit).any():
                continue
            kept.append(k)
            if eta < 1 and limit > 0.5:
                limit = F32(limit * F32(eta))
    return [int(order[k]) for k in kept]


def nms(boxes, scores, threshold, top_k):
    """ApplyNMS (the older one, used to pick hard examples) -> kept indices, best first.

    Takes the top_k scores (-1: all; note 0 keeps none), drops boxes smaller than 1e-5, and
    keeps the best remaining box, then removes those overlapping it by more than
    ``threshold``, until top_k are kept."""
    boxes = np.asarray(boxes, F32)
    small = sizes(boxes) < F32(1e-5)
    queue, kept = [int(i) for i in _ranked(scores, -np.inf, top_k)], []
    while queue:
        best = queue.pop(0)
        if small[best]:
            continue
        kept.append(best)
        if 0 <= top_k <= len(kept):
            break
        queue = [i for i in queue if not small[i]]
        if queue:
            ov = jaccard(boxes[best:best + 1], boxes[queue])[0]
            queue = [i for i, o in zip(queue, ov) if o <= F32(threshold)]
    return kept


def to_pixels(boxes, height, width):
    """OutputBBox without a resize: boxes clipped to [0, 1], then scaled to an image of
    ``height`` x ``width`` pixels."""
    clipped = np.clip(np.asarray(boxes, F32), F32(0), F32(1))
    return (clipped * np.array([width, height, width, height], F32)).astype(F32)


def average_precision(pairs, num_pos, version):
    """ComputeAP: AP of detections ``pairs`` [(score, is_true_positive)] of a class with
    ``num_pos`` ground-truth boxes, in float32.

    The detections are ranked by descending score (ties keep their order). "11point": the
    mean of the best precision at recall >= 0, 0.1, ..., 1 (VOC2007, with the fork's scan);
    "MaxIntegral": the area under the precision envelope (VOC2012); "Integral": the area
    under the raw precision-recall steps (ILSVRC)."""
    if not len(pairs) or num_pos == 0:
        return F32(0)
    order = sorted(range(len(pairs)), key=lambda i: -pairs[i][0])
    tp = np.cumsum([int(pairs[i][1]) for i in order])
    fp = np.cumsum([1 - int(pairs[i][1]) for i in order])
    prec = (tp.astype(F32) / (tp + fp).astype(F32)).astype(F32)
    rec = (tp.astype(F32) / F32(num_pos)).astype(F32)
    return AP_VERSIONS[version](prec, rec)


def _eleven_point(prec, rec):
    best, start = [F32(0)] * 11, len(prec) - 1
    for j in range(10, -1, -1):
        for i in range(start, -1, -1):
            if float(rec[i]) < j / 10.0:
                start = i
                if j > 0:
                    best[j - 1] = best[j]
                break
            best[j] = max(best[j], prec[i])
    ap = F32(0)
    for j in range(10, -1, -1):
        ap = F32(ap + best[j] / F32(11))
    return ap


def _max_integral(prec, rec):
    eps, ap = F32(1e-6), F32(0)
    cur_rec, cur_prec = rec[-1], prec[-1]
    for i in range(len(prec) - 2, -1, -1):
        cur_prec = max(prec[i], cur_prec)
        if abs(cur_rec - rec[i]) > eps:
            ap = F32(ap + cur_prec * abs(cur_rec - rec[i]))
        cur_rec = rec[i]
    return F32(ap + cur_rec * cur_prec)


def _integral(prec, rec):
    eps, ap, prev = F32(1e-6), F32(0), F32(0)
    for p, r in zip(prec, rec):
        if abs(r - prev) > eps:
            ap = F32(ap + p * abs(r - prev))
        prev = r
    return ap


AP_VERSIONS = {"11point": _eleven_point, "MaxIntegral": _max_integral, "Integral": _integral}
