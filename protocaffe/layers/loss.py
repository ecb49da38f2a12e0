"""Loss layers, Softmax and Accuracy.

A loss layer's first top is a 0-axis scalar and weighs 1 in the net's loss
unless ``loss_weight`` says otherwise. Labels arrive as floats holding class
indices and get no gradient, as in Caffe.
"""
import math

import torch
import torch.nn.functional as F

from protocaffe.layers.base import Layer, canonical_axis, count, register
from protocaffe.proto import caffe_pb2

FLT_MIN = 1.175494351e-38
LossParameter = caffe_pb2.LossParameter


def normalization_mode(loss_param):
    """Caffe's rule: ``normalization`` if set, else legacy ``normalize`` (VALID or BATCH_SIZE)."""
    if not loss_param.HasField("normalization") and loss_param.HasField("normalize"):
        return LossParameter.VALID if loss_param.normalize else LossParameter.BATCH_SIZE
    return loss_param.normalization


def normalizer(mode, outer, inner, valid):
    """The divisor of a summed loss: FULL outer*inner, VALID the non-ignored count,
    BATCH_SIZE outer, NONE 1; never below 1."""
    value = {LossParameter.FULL: outer * inner, LossParameter.VALID: valid,
             LossParameter.BATCH_SIZE: outer, LossParameter.NONE: 1}[mode]
    return torch.clamp(torch.as_tensor(value, dtype=torch.float32), min=1.0)


def _labels(label):
    return label.detach().long()


class _Loss(Layer):
    is_loss = True
    num_bottoms = 2

    def top_shapes(self, bottom_shapes):
        return [()]


@register
class Softmax(Layer):
    """softmax along ``axis`` (default 1); any shape -> the same shape."""
    type = "Softmax"

    def setup(self, bottom_shapes):
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]), self)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        return F.softmax(x, dim=self.axis)


@register
class SoftmaxWithLoss(_Loss):
    """Multinomial logistic loss of softmax(x): x (outer, C, inner...), label (outer, inner...) -> ().

    Sum over positions of -log(max(p[label], FLT_MIN)), positions with ``ignore_label``
    skipped, divided per ``normalization`` (default VALID). A second top gives the
    probabilities. The gradient is p - onehot even where the log is clamped, as in Caffe.
    """
    type = "SoftmaxWithLoss"
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.axis = canonical_axis(self.param.softmax_param.axis, len(shape), self)
        outer, inner = count(shape, 0, self.axis), count(shape, self.axis + 1)
        if count(bottom_shapes[1]) != outer * inner:
            raise self.error(f"label count ({count(bottom_shapes[1])}) must equal outer * inner "
                             f"({outer * inner}) of the prediction shape {shape}")
        self.mode = normalization_mode(self.param.loss_param)
        lp = self.param.loss_param
        self.ignore = lp.ignore_label if lp.HasField("ignore_label") else None

    def top_shapes(self, bottom_shapes):
        return [()] + [bottom_shapes[0]] * (len(self.param.top) - 1)

    def forward(self, x, label):
        logp = F.log_softmax(x, dim=self.axis)
        logp_m = logp.movedim(self.axis, -1).reshape(-1, x.shape[self.axis])
        lab = _labels(label).reshape(-1)
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore is None else lab != self.ignore
        picked = logp_m.gather(1, torch.where(valid, lab, 0)[:, None])[:, 0]
        clamped = picked + (picked.clamp(min=math.log(FLT_MIN)) - picked).detach()
        total = -(clamped * valid).sum()
        outer = count(x.shape, 0, self.axis)
        inner = count(x.shape, self.axis + 1)
        loss = total / normalizer(self.mode, outer, inner, valid.sum()).to(x.device)
        if len(self.param.top) > 1:
            return loss, logp.exp()
        return loss


@register
class EuclideanLoss(_Loss):
    """sum((a - b)^2) / (2 N) for a, b of shape (N, ...); both get gradients."""
    type = "EuclideanLoss"

    def forward(self, a, b):
        return ((a - b) ** 2).sum() / (2 * a.shape[0])


@register
class HingeLoss(_Loss):
    """x (N, K), label (N,): sum over i, k of max(0, 1 - t_ik x_ik)^p / N, t = +1 for the label, else -1;
    p = 1 (L1) or 2 (L2)."""
    type = "HingeLoss"

    def forward(self, x, label):
        x2 = x.reshape(x.shape[0], -1)
        sign = torch.full_like(x2, -1.0)
        sign.scatter_(1, _labels(label).reshape(-1, 1), 1.0)
        margin = F.relu(1 - sign * x2)
        if self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            margin = margin * margin
        return margin.sum() / x.shape[0]


@register
class SigmoidCrossEntropyLoss(_Loss):
    """Cross-entropy of sigmoid(x) against targets t in [0, 1], x and t of the same shape -> ().

    Summed over elements (``ignore_label`` skipped) and divided per ``normalization``
    with outer = N and inner = count / N. Unlike the other losses, with neither
    ``normalization`` nor ``normalize`` set Caffe divides by N (BATCH_SIZE), for
    compatibility with its older releases. Targets get no gradient.
    """
    type = "SigmoidCrossEntropyLoss"

    def setup(self, bottom_shapes):
        if count(bottom_shapes[0]) != count(bottom_shapes[1]):
            raise self.error(f"inputs must have the same count, found {bottom_shapes[0]} and {bottom_shapes[1]}")
        lp = self.param.loss_param
        unset = not lp.HasField("normalization") and not lp.HasField("normalize")
        self.mode = LossParameter.BATCH_SIZE if unset else normalization_mode(lp)
        self.ignore = lp.ignore_label if lp.HasField("ignore_label") else None

    def forward(self, x, target):
        t = target.detach().reshape(x.shape)
        per = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        valid = torch.ones_like(t, dtype=torch.bool) if self.ignore is None else t != self.ignore
        total = (per * valid).sum()
        outer = x.shape[0]
        return total / normalizer(self.mode, outer, x.numel() // outer, valid.sum()).to(x.device)


@register
class MultinomialLogisticLoss(_Loss):
    """Probabilities p (N, K), label (N,): -sum log(max(p[label], 1e-20)) / N."""
    type = "MultinomialLogisticLoss"

    def forward(self, p, label):
        p2 = p.reshape(p.shape[0], -1)
        picked = p2.gather(1, _labels(label).reshape(-1, 1))
        return -torch.log(picked.clamp(min=1e-20)).sum() / p.shape[0]


@register
class Accuracy(Layer):
    """Top-k accuracy: x (outer, C, inner...), label (outer, inner...) -> () [, per-class (C,)].

    A position counts as correct when fewer than ``top_k`` classes score strictly
    higher than the true one (ties favour the label, as in Caffe). No gradient.
    """
    type = "Accuracy"
    num_bottoms = 2
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        p = self.param.accuracy_param
        self.axis = canonical_axis(p.axis, len(bottom_shapes[0]), self)
        self.top_k = p.top_k
        self.ignore = p.ignore_label if p.HasField("ignore_label") else None
        classes = bottom_shapes[0][self.axis]
        if self.top_k > classes:
            raise self.error(f"top_k ({self.top_k}) must not exceed the number of classes ({classes})")

    def top_shapes(self, bottom_shapes):
        return [()] + [(bottom_shapes[0][self.axis],)] * (len(self.param.top) - 1)

    def forward(self, x, label):
        with torch.no_grad():
            classes = x.shape[self.axis]
            scores = x.movedim(self.axis, -1).reshape(-1, classes)
            lab = _labels(label).reshape(-1)
            valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore is None else lab != self.ignore
            safe = torch.where(valid, lab, 0)
            true_score = scores.gather(1, safe[:, None])
            correct = ((scores > true_score).sum(1) < self.top_k) & valid
            acc = correct.sum().float() / valid.sum().clamp(min=1).float()
            if len(self.param.top) == 1:
                return acc
            per_count = torch.bincount(safe[valid], minlength=classes).float()
            per_correct = torch.bincount(safe[correct], minlength=classes).float()
            per_class = torch.where(per_count > 0, per_correct / per_count.clamp(min=1), 0.0)
            return acc, per_class
