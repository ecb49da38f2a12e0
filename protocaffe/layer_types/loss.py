"""Loss layers, Softmax and Accuracy.

A loss layer's first top is a 0-axis scalar and weighs 1 in the net's loss
unless ``loss_weight`` says otherwise. Labels arrive as floats holding class
indices (truncated to int, as Caffe casts them) and get no gradient; a class label
outside [0, classes) that is not ``ignore_label`` is a CaffeError naming the layer, the
value and the class count (checked every batch: one small reduction and one
device-to-host sync; Caffe only DCHECKs this). Where a
loss offers the softmax probabilities as a second top, they carry no gradient
either: Caffe's backward ignores any diff that reaches them.
"""
import math

import torch
import torch.nn.functional as F

from protocaffe import fileio, schema
from protocaffe.errors import CaffeError
from protocaffe.layer_types.base import Layer, canonical_axis, count, register
from protocaffe.proto import caffe_pb2
from protocaffe.proto.forks import rfcn_pb2  # noqa: F401 (R-FCN's pre_fixed_normalizer in LossParameter)
from protocaffe.proto.forks import segnet_pb2  # noqa: F401 (SegNet's class weights in LossParameter)

FLT_MIN = 1.175494351e-38
LOG_THRESHOLD = 1e-20
"""Caffe's kLOG_THRESHOLD: the floor of a probability before its log (InfogainLoss, MultinomialLogistic)."""
LossParameter = caffe_pb2.LossParameter


def normalization_mode(loss_param):
    """Caffe's rule: ``normalization`` if set, else legacy ``normalize`` (VALID or BATCH_SIZE)."""
    if not loss_param.HasField("normalization") and loss_param.HasField("normalize"):
        return LossParameter.VALID if loss_param.normalize else LossParameter.BATCH_SIZE
    return loss_param.normalization


def pre_fixed(loss_param):
    """R-FCN's ``pre_fixed_normalizer`` (proto/forks/rfcn.proto), the divisor under PRE_FIXED."""
    return schema.get(loss_param, "pre_fixed_normalizer")


def normalizer(mode, outer, inner, valid, fixed=1.0):
    """The divisor of a summed loss: FULL outer*inner, VALID the non-ignored count,
    BATCH_SIZE outer, NONE 1, PRE_FIXED (R-FCN's) ``fixed``; never below 1."""
    if mode == LossParameter.VALID:  # a count on the device: divide there, no read-back
        return torch.clamp(valid.to(torch.float32), min=1.0)
    return float(max(1, {LossParameter.FULL: outer * inner, LossParameter.BATCH_SIZE: outer,
                         LossParameter.NONE: 1, LossParameter.PRE_FIXED: fixed}[mode]))


def _labels(label):
    return label.detach().long()


def _ignore_label(loss_param):
    return loss_param.ignore_label if loss_param.HasField("ignore_label") else None


def _valid(lab, ignore):
    return torch.ones_like(lab, dtype=torch.bool) if ignore is None else lab != ignore


CHECK_DEVICE_LABELS = False
"""Also check labels that live on an accelerator (``protocaffe --debug`` turns it on): one
device-to-host sync per batch, which the training loop otherwise never makes."""


def _check_labels(layer, lab, valid, classes):
    """A CaffeError naming the layer, the first label outside [0, classes) that is not
    ignored, and the class count, instead of a failed gather (a device-side assert on CUDA).
    Labels on the CPU are always checked (one cheap reduction per batch); on a GPU only
    with CHECK_DEVICE_LABELS."""
    if lab.device.type != "cpu" and not CHECK_DEVICE_LABELS:
        return
    bad = valid & ((lab < 0) | (lab >= classes))
    if bad.any():
        raise layer.error(f"label {int(lab[bad][0])} is outside [0, {classes}): the prediction "
                          f"has {classes} classes")


def _floored_log(logp, floor):
    """log(max(p, floor)) in the forward pass, with the gradient of log(p), as Caffe's backward."""
    return logp + (logp.clamp(min=math.log(floor)) - logp).detach()


def _per_position(x, axis):
    """(outer, C, inner...) -> (outer * inner, C): one row of class scores per labelled position."""
    return x.movedim(axis, -1).reshape(-1, x.shape[axis])


class _Loss(Layer):
    """Caffe's LossLayer: data and label share their first axis; the loss is a 0-axis scalar."""
    is_loss = True
    num_bottoms = 2

    def setup(self, bottom_shapes):
        a, b = bottom_shapes[0], bottom_shapes[1]
        if a[:1] != b[:1]:
            raise self.error(f"bottoms must have the same first dimension, found shapes {a} and {b}")

    def top_shapes(self, bottom_shapes):
        return [()]


def _class_axis(layer, bottom_shapes, axis):
    """The class axis of scores (outer, C, inner...), checking one label per (outer, inner) position."""
    shape = bottom_shapes[0]
    axis = canonical_axis(axis, len(shape), layer)
    positions = count(shape, 0, axis) * count(shape, axis + 1)
    if count(bottom_shapes[1]) != positions:
        raise layer.error(f"needs one label per prediction: {positions} for prediction shape {shape} "
                          f"(class axis {axis}), found {count(bottom_shapes[1])} in shape {bottom_shapes[1]}")
    return axis


class _SoftmaxLoss(_Loss):
    """A loss over softmax(x) along ``self.axis``, normalized per ``self.mode``; an optional
    second top gives the probabilities."""
    num_tops = (1, 2)

    def top_shapes(self, bottom_shapes):
        return [()] + [bottom_shapes[0]] * (len(self.param.top) - 1)

    def _tops(self, total, x, logp, valid):
        outer, inner = count(x.shape, 0, self.axis), count(x.shape, self.axis + 1)
        loss = total / normalizer(self.mode, outer, inner, valid.sum(), pre_fixed(self.param.loss_param))
        if len(self.param.top) > 1:
            return loss, logp.detach().exp()
        return loss


@register
class Softmax(Layer):
    """softmax along ``axis``; x (any) -> same shape."""
    type = "Softmax"

    def setup(self, bottom_shapes):
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]), self)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        return F.softmax(x, dim=self.axis)


@register
class SoftmaxWithLoss(_SoftmaxLoss):
    """Multinomial logistic loss of softmax(x): x (outer, C, inner...), label (outer, inner...) -> ()
    [, probabilities like x].

    The class axis is ``softmax_param.axis``. Sum over positions of -log(max(p[label], FLT_MIN)),
    positions with ``ignore_label`` skipped, divided per ``normalization`` (legacy ``normalize``
    true = VALID, false = BATCH_SIZE). The gradient is p - onehot even where the log is
    floored, as in Caffe. A label outside [0, C) that is not ignored is a CaffeError, checked
    on the host once per batch (one reduction and one device-to-host sync).

    SegNet's and ENet's forks weigh classes: with loss_param ``weight_by_label_freqs`` each
    position's term (and so its gradient, (p - onehot) w) is multiplied by
    ``class_weighting[label]`` (one weight per class). The sum is still divided by the count
    of positions, not by the weights' sum, as in those forks (they read the legacy
    ``normalize``, which protocaffe's rule above applies while ``normalization`` is unset).

    R-FCN's Caffe adds a third top, shaped like the label: each position's loss (0 where
    ignored), without gradient, for BoxAnnotatorOHEM to rank regions by.
    """
    type = "SoftmaxWithLoss"
    num_tops = (1, 3)

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        self.axis = _class_axis(self, bottom_shapes, self.param.softmax_param.axis)
        self.mode = normalization_mode(self.param.loss_param)
        self.ignore = _ignore_label(self.param.loss_param)
        weights = None
        if schema.get(self.param.loss_param, "weight_by_label_freqs"):
            weights = list(schema.get(self.param.loss_param, "class_weighting"))
            classes = bottom_shapes[0][self.axis]
            if len(weights) != classes:
                raise self.error(f"weight_by_label_freqs needs one class_weighting per class ({classes}), "
                                 f"found {len(weights)}")
            weights = torch.tensor(weights)
        self.register_buffer("class_weights", weights, persistent=False)

    def top_shapes(self, bottom_shapes):
        return [(), bottom_shapes[0], bottom_shapes[1]][:len(self.param.top)]

    def forward(self, x, label):
        logp = F.log_softmax(x, dim=self.axis)
        lab = _labels(label).reshape(-1)
        valid = _valid(lab, self.ignore)
        _check_labels(self, lab, valid, x.shape[self.axis])
        safe = torch.where(valid, lab, 0)
        picked = _per_position(logp, self.axis).gather(1, safe[:, None])[:, 0]
        terms = _floored_log(picked, FLT_MIN) * valid
        if self.class_weights is not None:
            terms = terms * self.class_weights.to(x.dtype)[safe]
        tops = self._tops(-terms.sum(), x, logp, valid)
        if len(self.param.top) < 3:
            return tops
        return (*tops, -terms.detach().reshape(label.shape))


@register
class InfogainLoss(_SoftmaxLoss):
    """Infogain-weighted log loss of softmax(x): x (outer, K, inner...), label (outer, inner...)
    [, H (K x K)] -> () [, probabilities like x].

    Sum over positions of -sum_l H[label, l] log(max(p_l, 1e-20)), ``ignore_label`` skipped,
    divided per ``normalization`` (Caffe rejects the legacy ``normalize`` here). As in Caffe
    1.0 the layer takes raw scores and applies softmax along ``infogain_loss_param.axis``
    itself. H is read from ``infogain_loss_param.source`` (a binaryproto, relative to the
    working directory) or given as a third bottom, which gets no gradient.
    """
    type = "InfogainLoss"
    num_bottoms = (2, 3)

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        p, lp = self.param.infogain_loss_param, self.param.loss_param
        self.axis = _class_axis(self, bottom_shapes, p.axis)
        if lp.HasField("normalize"):
            raise self.error('loss_param.normalize is deprecated here; use "normalization"')
        self.mode, self.ignore = lp.normalization, _ignore_label(lp)
        k = bottom_shapes[0][self.axis]
        if len(bottom_shapes) == 3:
            found = count(bottom_shapes[2])
        elif not p.source:
            raise self.error("needs infogain_loss_param.source or a third bottom holding the matrix H")
        else:
            try:
                h = fileio.blob_to_array(fileio.read_binary(p.source, caffe_pb2.BlobProto))
            except CaffeError as e:
                raise self.error(f"cannot read infogain_loss_param.source: {e}") from None
            found = h.size
            self.register_buffer("infogain", torch.from_numpy(h.astype("float32")), persistent=False)
        if found != k * k:
            raise self.error(f"matrix H must hold {k}x{k} = {k * k} values for {k} classes, found {found}")

    def forward(self, x, label, infogain=None):
        k = x.shape[self.axis]
        h = (self.infogain if infogain is None else infogain.detach()).reshape(k, k).to(x.dtype)
        logp = F.log_softmax(x, dim=self.axis)
        lab = _labels(label).reshape(-1)
        valid = _valid(lab, self.ignore)
        _check_labels(self, lab, valid, k)
        rows = h[torch.where(valid, lab, 0)]
        per = -(rows * _floored_log(_per_position(logp, self.axis), LOG_THRESHOLD)).sum(1)
        return self._tops((per * valid).sum(), x, logp, valid)


@register
class EuclideanLoss(_Loss):
    """sum((a - b)^2) / (2 N) for a, b of shape (N, ...) with equal counts -> (); both get gradients."""
    type = "EuclideanLoss"

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        a, b = bottom_shapes
        if count(a, 1) != count(b, 1):
            raise self.error(f"bottoms must have the same count per item, found shapes {a} and {b}")

    def forward(self, a, b):
        return ((a - b.reshape(a.shape)) ** 2).sum() / (2 * a.shape[0])


@register
class HingeLoss(_Loss):
    """x (N, K...), label (N,) -> (): sum over i, k of max(0, 1 - t_ik x_ik)^p / N with t = +1 for
    the label and -1 otherwise; p = 1 (``norm`` L1) or 2 (L2). The one-vs-all SVM loss."""
    type = "HingeLoss"

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        if count(bottom_shapes[1]) != bottom_shapes[0][0]:
            raise self.error(f"needs one label per item ({bottom_shapes[0][0]}), "
                             f"found label shape {bottom_shapes[1]}")

    def forward(self, x, label):
        x2 = x.reshape(x.shape[0], -1)
        lab = _labels(label).reshape(-1, 1)
        _check_labels(self, lab, _valid(lab, None), x2.shape[1])
        sign = torch.full_like(x2, -1.0).scatter(1, lab, 1.0)
        margin = F.relu(1 - sign * x2)
        if self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            margin = margin * margin
        return margin.sum() / x.shape[0]


@register
class SigmoidCrossEntropyLoss(_Loss):
    """Cross-entropy of sigmoid(x) against targets t in [0, 1]; x, t of equal count -> ().

    Summed over elements (targets whose int value is ``ignore_label`` skipped) and divided
    per ``normalization`` with outer = N and inner = count / N. Unlike the other losses, with
    neither ``normalization`` nor ``normalize`` set Caffe 1.0 divides by N (BATCH_SIZE), for
    compatibility with its older releases. Targets get no gradient.
    """
    type = "SigmoidCrossEntropyLoss"

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        if count(bottom_shapes[0]) != count(bottom_shapes[1]):
            raise self.error(f"inputs must have the same count, found shapes {bottom_shapes[0]} "
                             f"and {bottom_shapes[1]}")
        lp = self.param.loss_param
        unset = not lp.HasField("normalization") and not lp.HasField("normalize")
        self.mode = LossParameter.BATCH_SIZE if unset else normalization_mode(lp)
        self.ignore = _ignore_label(lp)

    def forward(self, x, target):
        t = target.detach().reshape(x.shape)
        per = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        valid = _valid(t.long(), self.ignore)
        outer = x.shape[0]
        norm = normalizer(self.mode, outer, x.numel() // outer, valid.sum(), pre_fixed(self.param.loss_param))
        return (per * valid).sum() / norm


@register
class MultinomialLogisticLoss(_Loss):
    """Probabilities p (N, K...), label (N,) -> (): -sum log(max(p[label], 1e-20)) / N.

    The gradient is -1 / max(p[label], 1e-20) at the label, as in Caffe, also where the floor applies.
    """
    type = "MultinomialLogisticLoss"

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        if count(bottom_shapes[1], 1) != 1:
            raise self.error(f"needs one label per item, found label shape {bottom_shapes[1]}")

    def forward(self, p, label):
        p2 = p.reshape(p.shape[0], -1)
        lab = _labels(label).reshape(-1, 1)
        _check_labels(self, lab, _valid(lab, None), p2.shape[1])
        picked = p2.gather(1, lab)
        floored = picked + (picked.clamp(min=LOG_THRESHOLD) - picked).detach()
        return -torch.log(floored).sum() / p.shape[0]


@register
class ContrastiveLoss(_Loss):
    """a, b (N, C[, 1, 1]), similar (N[, 1, 1, 1]) -> (): sum over pairs / (2 N) of d^2 for similar
    pairs (label != 0) and max(margin - d, 0)^2 for dissimilar ones, d = ||a - b||.

    With ``legacy_version`` the dissimilar term is max(margin - d^2, 0). Caffe's gradient of the
    non-legacy term divides by d + 1e-4 rather than d (finite when a = b); this layer does the same.
    """
    type = "ContrastiveLoss"
    num_bottoms = 3

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        a, b, sim = bottom_shapes
        if count(a, 1) != count(b, 1) or count(a, 2) != 1 or count(b, 2) != 1:
            raise self.error(f"needs two bottoms of shape (N, C, 1, 1), found {a} and {b}")
        if count(sim) != a[0]:
            raise self.error(f"needs one similarity label per pair ({a[0]}), found shape {sim}")

    def forward(self, a, b, similar):
        p = self.param.contrastive_loss_param
        diff = (a - b.reshape(a.shape)).reshape(a.shape[0], -1)
        dist_sq = (diff * diff).sum(1)
        if p.legacy_version:
            apart = F.relu(p.margin - dist_sq)
        else:
            dist = dist_sq.detach().sqrt()
            # value d, gradient (a - b) / (d + 1e-4): Caffe's backward
            surrogate = dist_sq / (2 * (dist + 1e-4))
            apart = F.relu(p.margin - (dist + surrogate - surrogate.detach())) ** 2
        same = _labels(similar).reshape(-1) != 0
        return torch.where(same, dist_sq, apart).sum() / (2 * a.shape[0])


@register
class Accuracy(Layer):
    """Top-k accuracy: x (outer, C, inner...), label (outer, inner...) -> () [, per-class (C,)].

    A position is correct when fewer than ``top_k`` other classes score at least as high as
    the true one (ties count against the label, as in Caffe). Positions with ``ignore_label``
    are skipped; a class without labels has per-class accuracy 0. No gradient. Not a loss.
    """
    type = "Accuracy"
    num_bottoms = 2
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        p = self.param.accuracy_param
        self.axis = _class_axis(self, bottom_shapes, p.axis)
        self.ignore = p.ignore_label if p.HasField("ignore_label") else None
        classes = bottom_shapes[0][self.axis]
        if p.top_k > classes:
            raise self.error(f"top_k ({p.top_k}) must not exceed the number of classes ({classes})")

    def top_shapes(self, bottom_shapes):
        return [()] + [(bottom_shapes[0][self.axis],)] * (len(self.param.top) - 1)

    @torch.no_grad()
    def forward(self, x, label):
        classes = x.shape[self.axis]
        scores = _per_position(x, self.axis)
        lab = _labels(label).reshape(-1)
        valid = _valid(lab, self.ignore)
        _check_labels(self, lab, valid, classes)
        safe = torch.where(valid, lab, 0)
        at_least = (scores >= scores.gather(1, safe[:, None])).sum(1) - 1
        correct = (at_least < self.param.accuracy_param.top_k) & valid
        acc = correct.sum().to(x.dtype) / valid.sum().clamp(min=1).to(x.dtype)
        if len(self.param.top) == 1:
            return acc
        per_count = torch.bincount(safe[valid], minlength=classes).to(x.dtype)
        per_correct = torch.bincount(safe[correct], minlength=classes).to(x.dtype)
        return acc, torch.where(per_count > 0, per_correct / per_count.clamp(min=1), 0.0)
