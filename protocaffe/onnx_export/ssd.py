"""Exporters of the SSD fork's inference layers (PriorBox, Permute, Normalize, DetectionOutput),
added to the same table as Caffe's own.

PriorBox is a constant: its boxes depend only on the heights and widths of its bottoms,
which the export fixes (a symbolic batch leaves them as they are). Permute is a Transpose and
Normalize a sum of squares, Sqrt, Div and Mul, as the fork computes them. DetectionOutput is
written out of ONNX ops (see :func:`detection_output`); the one setting it cannot follow, an
``eta`` below 1 with ``nms_threshold`` above 0.5, is refused naming the layer.
"""
import numpy as np
from onnx import TensorProto, helper

from protocaffe.bbox import CENTER_SIZE, CORNER_SIZE
from protocaffe.onnx_export.layers import _reshape, exports


@exports("PriorBox")
def prior_box(g, layer, xs, shapes):
    """The (1, 2, H*W*K*4) boxes and variances of the bottoms' sizes, as a constant."""
    boxes = layer.boxes(*shapes[0][2:4], *shapes[1][2:4])
    value = g.const(boxes, f"{layer.name}/priors")
    g.declared[value] = boxes.shape
    return [value]


@exports("Permute")
def permute(g, layer, xs, shapes):
    if layer.order == tuple(range(len(shapes[0]))):
        return xs
    if layer.order[0] != 0:
        g.fixed_batch(layer, "it moves the batch axis")
    return [g.node("Transpose", xs, layer.name, perm=list(layer.order))]


@exports("Normalize")
def normalize(g, layer, xs, shapes):
    """x / sqrt(sum x^2 + eps) * s: the sum over the channels at each position (or over the
    whole item with across_spatial), eps inside the root as the fork adds it; s one value or
    one per channel."""
    x, name, ndim = xs[0], layer.name, len(shapes[0])
    axes = list(range(1, ndim)) if layer.across_spatial else [1]
    squares = g.node("ReduceSum", [g.node("Mul", [x, x], name), g.ints(axes, f"{name}/axes")], name, keepdims=1)
    norm = g.node("Sqrt", [g.node("Add", [squares, g.const(layer.eps, f"{name}/eps")], name)], name)
    scale = layer.weight.detach()
    if scale.dim():
        scale = scale.reshape((-1,) + (1,) * (ndim - 2))
    return [g.node("Mul", [g.node("Div", [x, norm], name), g.const(scale, f"{name}/scale")], name)]


def _decode(g, layer, loc, priors):
    """bbox.decode in ONNX ops: loc (N, L, P, 4) offsets on priors (1, 2, P*4) -> boxes (N, L, P, 4)."""
    p, name = layer.p, layer.name
    priors = g.node("Reshape", [priors, g.ints([2, layer.priors, 4], f"{name}/priors_shape")], name)
    box, var = g.node("Split", [priors, g.ints([1, 1], f"{name}/split_priors")], name, outputs=2, axis=0)
    d = loc if p.variance_encoded_in_target else g.node("Mul", [var, loc], name)
    halves = g.ints([2, 2], f"{name}/halves")
    low, high = g.node("Split", [box, halves], name, outputs=2, axis=-1)
    size = g.node("Sub", [high, low], name)
    if p.code_type == CENTER_SIZE:  # centre + d_xy size, size e^d_wh, back to corners
        two = g.const(2, f"{name}/two")
        centre = g.node("Div", [g.node("Add", [low, high], name), two], name)
        d_xy, d_wh = g.node("Split", [d, halves], name, outputs=2, axis=-1)
        centre = g.node("Add", [g.node("Mul", [d_xy, size], name), centre], name)
        half = g.node("Div", [g.node("Mul", [g.node("Exp", [d_wh], name), size], name), two], name)
        return g.node("Concat", [g.node("Sub", [centre, half], name), g.node("Add", [centre, half], name)],
                      name, axis=-1)
    if p.code_type == CORNER_SIZE:
        d = g.node("Mul", [d, g.node("Concat", [size, size], name, axis=-1)], name)
    return g.node("Add", [box, d], name)


@exports("DetectionOutput")
def detection_output(g, layer, xs, shapes):
    """The fork's rows (1, 1, D, 7) [image, label, score, xmin, ymin, xmax, ymax], D counted by the data.

    Per image and class other than the background: the class's ``top_k`` best scores (TopK,
    ties to the lower prior as the fork's stable sort), their decoded boxes, ONNX
    NonMaxSuppression over them with the candidates' ranks as scores (so that it visits them
    in the fork's order, ties included) and only those above ``confidence_threshold``; a box
    with xmax < xmin or ymax < ymin overlaps nothing in the fork, and reaches the NMS with
    zero width or height for the same effect. Then per image the best ``keep_top_k`` over
    all classes (TopK, ties to the lower class, then the better rank), and the rows by image,
    class and descending score (NonZero's order), or one row [image, -1, ...] per image when
    nothing is kept in the whole batch.
    """
    nms = layer.p.nms_param
    if nms.eta < 1 and nms.nms_threshold > 0.5:
        raise layer.error(f"nms eta {nms.eta:.6g} lowers the overlap threshold {nms.nms_threshold:.6g} after each "
                          "kept box; ONNX's NonMaxSuppression has one threshold, so the layer has no ONNX form here "
                          "(export up to its bottoms with outputs=[...] and decode as the README says)")
    classes = [c for c in range(layer.p.num_classes) if c != layer.p.background_label_id]
    k = layer.priors if layer.top_k < 0 else min(layer.top_k, layer.priors)
    scores, candidates = _candidates(g, layer, xs, shapes[0][0], classes, k)
    selected = _nms(g, layer, candidates, scores, k)
    selected = g.node("Reshape", [selected, g.ints([-1, len(classes) * k], f"{layer.name}/per_image")], layer.name)
    if -1 < layer.p.keep_top_k < len(classes) * k:
        best, where = g.node("TopK", [selected, g.ints([layer.p.keep_top_k], f"{layer.name}/keep_top_k")], layer.name,
                             outputs=2, axis=1)
        selected = g.node("ScatterElements", [_filled(g, layer.name, selected, -np.inf), where, best], layer.name,
                          axis=1)
    value = _rows(g, layer, selected, candidates, np.repeat(classes, k), xs[1])
    g.declared[value] = (1, 1, f"{layer.name}_rows", 7)
    return [value]


def _candidates(g, layer, xs, n, classes, k):
    """The ``k`` best scores (N, C', K) of each image and class of ``classes``, and their decoded
    boxes (N, C'*K, 4)."""
    name, priors = layer.name, layer.priors
    picked = g.ints(classes, f"{name}/classes")
    loc = _reshape(g, layer, xs[0], (n, priors, layer.loc_classes, 4), True)
    boxes = _decode(g, layer, g.node("Transpose", [loc], name, perm=[0, 2, 1, 3]), xs[2])  # (N, L, P, 4)
    conf = _reshape(g, layer, xs[1], (n, priors, layer.p.num_classes), True)
    conf = g.node("Gather", [g.node("Transpose", [conf], name, perm=[0, 2, 1]), picked], name, axis=1)
    scores, ranked = g.node("TopK", [conf, g.ints([k], f"{name}/top_k")], name, outputs=2, axis=-1)
    if layer.p.share_location:
        ranked = g.node("Reshape", [ranked, g.ints([0, -1, 1], f"{name}/flat_indices")], name)
        boxes = g.node("Reshape", [boxes, g.ints([0, priors, 4], f"{name}/shared")], name)
        return scores, g.node("GatherND", [boxes, ranked], name, batch_dims=1)
    ranked = g.node("Unsqueeze", [ranked, g.ints([-1], f"{name}/last")], name)
    boxes = g.node("GatherND", [g.node("Gather", [boxes, picked], name, axis=1), ranked], name, batch_dims=2)
    return scores, g.node("Reshape", [boxes, g.ints([0, len(classes) * k, 4], f"{name}/flat_boxes")], name)


def _filled(g, name, like, value):
    """A tensor of ``like``'s shape holding ``value``."""
    fill = helper.make_tensor("value", g.elem_type, [1], np.array([value], g.dtype))
    return g.node("ConstantOfShape", [g.node("Shape", [like], name)], name, value=fill)


def _column(g, name, x, i):
    """Column ``i`` of the 2-axis ``x``, as a 1-axis value."""
    return g.node("Gather", [x, g.ints(i, f"{name}/column_{i}")], name, axis=1)


def _nms(g, layer, candidates, scores, k):
    """Flat (N*C'*K,) scores of the candidates NonMaxSuppression keeps, -inf for the others.

    Each (image, class) is one NMS batch of K boxes (N*C', K, 4); its scores are K - rank for
    the candidates above the confidence threshold and 0 for the rest, with a score threshold
    of 1/2. Corners are kept at max(min corner, max corner), so an inverted box has no area."""
    name = layer.name
    low, high = g.node("Split", [candidates, g.ints([2, 2], f"{name}/corners")], name, outputs=2, axis=-1)
    boxes = g.node("Concat", [low, g.node("Max", [low, high], name)], name, axis=-1)
    if g.dtype != np.float32:
        boxes = g.node("Cast", [boxes], name, to=TensorProto.FLOAT)
    boxes = g.node("Reshape", [boxes, g.ints([-1, k, 4], f"{name}/nms_boxes")], name)
    threshold = max(layer.threshold, float(np.finfo(g.dtype).min))  # none: -FLT_MAX, the lowest float16 in fp16
    above = g.node("Greater", [scores, g.const(threshold, f"{name}/confidence_threshold")], name)
    ranks = g.float32(np.arange(k, 0, -1), f"{name}/ranks")
    ranks = g.node("Where", [above, ranks, g.float32(0, f"{name}/below")], name)
    ranks = g.node("Reshape", [ranks, g.ints([-1, 1, k], f"{name}/nms_scores")], name)
    limits = [g.ints([k], f"{name}/per_class"), g.float32([layer.p.nms_param.nms_threshold], f"{name}/nms_threshold"),
              g.float32([0.5], f"{name}/score_threshold")]
    kept = g.node("NonMaxSuppression", [boxes, ranks] + limits, name)  # (M, 3): batch, 0, box
    where = g.node("Add", [g.node("Mul", [_column(g, name, kept, 0), g.ints(k, f"{name}/k")], name),
                           _column(g, name, kept, 2)], name)
    flat = g.node("Reshape", [scores, g.ints([-1], f"{name}/flat")], name)
    where_nd = g.node("Unsqueeze", [where, g.ints([1], f"{name}/index_axis")], name)
    return g.node("ScatterND", [_filled(g, name, flat, -np.inf), where_nd, g.node("Gather", [flat, where], name)],
                  name)


def _rows(g, layer, selected, candidates, labels, conf):
    """(1, 1, D, 7) rows of the scores ``selected`` (N, C'*K) above -inf, ``labels`` (C'*K,) of
    their places; the rows [image, -1, ...] when there are none."""
    name = layer.name
    found = g.node("NonZero", [g.node("Greater", [selected, g.const(-np.inf, f"{name}/none")], name)], name)
    found = g.node("Transpose", [found], name, perm=[1, 0])  # (D, 2): image, place
    image = g.node("Cast", [g.node("Unsqueeze", [_column(g, name, found, 0), g.ints([1], f"{name}/image_axis")], name)],
                   name, to=g.elem_type)
    label = g.node("Gather", [g.const(labels.reshape(-1, 1), f"{name}/labels"), _column(g, name, found, 1)], name)
    scored = g.node("Concat", [g.node("Unsqueeze", [selected, g.ints([-1], f"{name}/score_axis")], name),
                               candidates], name, axis=-1)
    rows = g.node("Concat", [image, label, g.node("GatherND", [scored, found], name)], name, axis=1)
    rows = g.node("Concat", [rows, _none_found(g, layer, conf, found)], name, axis=0)
    return g.node("Reshape", [rows, g.ints([1, 1, -1, 7], f"{name}/rows")], name)


def _none_found(g, layer, conf, found):
    """The rows [image, -1, -1, -1, -1, -1, -1] of every image when ``found`` (D, 2) is empty, else none."""
    name = layer.name
    n = g.node("Gather", [g.node("Shape", [conf], name), g.ints([0], f"{name}/batch_axis")], name, axis=0)
    images = g.node("Range", [g.ints(0, f"{name}/first"), g.node("Squeeze", [n], name), g.ints(1, f"{name}/step")],
                    name)
    images = g.node("Unsqueeze", [images, g.ints([1], f"{name}/column")], name)
    fake = g.node("Pad", [images, g.ints([0, 0, 0, 6], f"{name}/pads"), g.ints(-1, f"{name}/minus_one")], name)
    count = g.node("Gather", [g.node("Shape", [found], name), g.ints([0], f"{name}/count_axis")], name, axis=0)
    none = g.node("Cast", [g.node("Equal", [count, g.ints([0], f"{name}/no_rows")], name)], name, to=TensorProto.INT64)
    fake = g.node("Slice", [fake, g.ints([0], f"{name}/start"), g.node("Mul", [n, none], name),
                            g.ints([0], f"{name}/axis")], name)
    return g.node("Cast", [fake], name, to=g.elem_type)
