"""Face recognition forks: SphereFace's ``MarginInnerProduct`` and caffe-face's ``CenterLoss``.

Both have a backward that is not the derivative of their forward (the forks' own update
rules), so each runs through a torch.autograd.Function.
"""
import numpy as np
import torch

from protocaffe.layer_types.base import Layer, canonical_axis, count, register
from protocaffe.layer_types.loss import _Loss
from protocaffe.proto.forks import caffe_face_pb2, sphereface_pb2  # noqa: F401 (the layers' parameters)

MARGIN = sphereface_pb2.MarginInnerProductParameter


def _labels(layer, label, classes):
    lab = label.detach().reshape(-1).long()
    if lab.numel() and (lab.min() < 0 or lab.max() >= classes):
        bad = lab[(lab < 0) | (lab >= classes)][0]
        raise layer.error(f"label {int(bad)} is outside [0, {classes})")
    return lab


def _margin_terms(kind, c):
    """psi(theta) = cos(m theta) made monotone (SphereFace's piecewise Chebyshev form), and the
    (w, x) coefficients of the fork's backward before |x| scaling, for cos ``c``. The signs
    are caffe_cpu_sign's (0 at 0), as torch.sign."""
    s0 = torch.sign(c)
    if kind == MARGIN.DOUBLE:
        psi = 2 * s0 * c ** 2 - 1
        return psi, 4 * s0 * c, 2 * s0 * c ** 2 + 1
    if kind == MARGIN.TRIPLE:
        s1 = torch.sign(c.abs() - 0.5)
        s2 = s0 * (1 + s1) - 2
        psi = s1 * (4 * c ** 3 - 3 * c) + s2
        return psi, s1 * (12 * c ** 2 - 3), 8 * s1 * c ** 3 - s2
    s3 = s0 * torch.sign(2 * c ** 2 - 1)
    s4 = 2 * s0 + s3 - 3
    psi = s3 * (8 * c ** 4 - 8 * c ** 2 + 1) + s4
    return psi, s3 * (32 * c ** 3 - 16 * c), s3 * (24 * c ** 4 - 8 * c ** 2 - 1) - s4


class _Margin(torch.autograd.Function):
    """top = x W^T, the label column replaced by |x| psi and everything mixed with lambda:
    (top + lambda x W^T) / (1 + lambda). Backward: the fork's (see MarginInnerProduct)."""

    @staticmethod
    def forward(ctx, x, weight, lab, kind, lam):
        wx = x @ weight.t()
        ctx.save_for_backward(x, weight.detach().clone(), lab)
        ctx.kind, ctx.lam = kind, lam
        if kind == MARGIN.SINGLE:
            return wx
        rows = torch.arange(len(lab), device=x.device)
        norm = x.norm(dim=1)
        psi = _margin_terms(kind, wx[rows, lab] / norm)[0]
        top = wx.clone()
        top[rows, lab] = norm * psi
        return (top + lam * wx) * (1 / (1 + lam))

    @staticmethod
    def backward(ctx, grad):
        x, weight, lab = ctx.saved_tensors
        grad_w = grad.t() @ x
        if ctx.kind == MARGIN.SINGLE:
            return grad @ weight, grad_w, None, None, None
        lam, rows = ctx.lam, torch.arange(len(lab), device=x.device)
        norm = x.norm(dim=1)
        _, cw, cx = _margin_terms(ctx.kind, (x * weight[lab]).sum(1) / norm)
        cx = -cx / norm
        length = torch.sqrt(cw * cw + cx * cx)
        cw, cx = cw / length, cx / length
        g_label = grad[rows, lab]
        others = grad.clone()
        others[rows, lab] = 0
        dx = (others @ weight) * (1 / (1 + lam)) + (lam / (1 + lam)) * (grad @ weight)
        dx = dx + (g_label / (1 + lam))[:, None] * (cw[:, None] * weight[lab] + cx[:, None] * x)
        return dx, grad_w, None, None, None


@register
class MarginInnerProduct(Layer):
    """SphereFace's A-Softmax inner product: x (M, ... from ``axis``: K), label (M) ->
    (M, num_output) [, lambda (1,)]; one blob, the weight (num_output, K), no bias.

    ``margin_inner_product_param``: ``num_output``, ``type`` (m: SINGLE 1, DOUBLE 2, TRIPLE 3,
    QUADRUPLE 4), ``weight_filler``, ``axis``, and lambda's schedule ``base``, ``gamma``,
    ``power``, ``lambda_min``, ``iteration``. As in the fork, every forward first counts one
    iteration (the layer's own counter, starting at ``iteration``, not saved with the
    weights) and normalizes the weight's rows in place (the saved weights are unit rows);
    then with cos = x.w_j / |x| the output is x W^T, except at the label, |x| psi(theta) with
    psi the monotone cos(m theta) (e.g. m = 4: s3 (8 cos^4 - 8 cos^2 + 1) + s4, s3 and s4
    signs fixing the branch); for m > 1 all of it is mixed as (out + lambda x W^T) / (1 +
    lambda), lambda = max(base (1 + gamma iter)^-power, lambda_min). The second top is lambda.

    Backward, the fork's: the weight gets top_diff^T x (the margin and the normalization
    ignored); x gets top_diff W except at the label, where the direction (c_w w + c_x x) is
    the derivative's direction normalized to unit (c_w, c_x), scaled by 1 / (1 + lambda),
    plus lambda / (1 + lambda) top_diff W. Caffe writes lambda whether or not the layer has a
    second top (and fails with one top); here one top is allowed.
    """
    type = "MarginInnerProduct"
    num_bottoms = 2
    num_tops = (1, 2)
    blob_names = ("weight",)

    def setup(self, bottom_shapes):
        p = self.layer_param("margin_inner_product_param")
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self)
        if shape[:1] != bottom_shapes[1][:1]:
            raise self.error(f"needs one label per sample: bottoms' first dimensions differ, "
                             f"shapes {shape} and {bottom_shapes[1]}")
        if p.num_output < 1:
            raise self.error("margin_inner_product_param needs num_output >= 1")
        self.p, self.iteration = p, p.iteration
        self.add_blob("weight", (p.num_output, count(shape, self.axis)), p.weight_filler)

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0][:self.axis]) + (self.p.num_output,), (1,)][:len(self.param.top)]

    def lambda_(self):
        """max(base (1 + gamma iter)^-power, lambda_min) in float32, as the fork."""
        f, p = np.float32, self.p
        lam = f(p.base) * np.power(f(1) + f(p.gamma) * f(self.iteration), -f(p.power))
        return float(max(lam, f(p.lambda_min)))

    def forward(self, x, label):
        self.iteration += 1
        lam = self.lambda_()
        with torch.no_grad():
            self.weight.mul_(1 / self.weight.pow(2).sum(1, keepdim=True).sqrt())
        flat = x.reshape(count(x.shape, 0, self.axis), -1)
        lab = _labels(self, label, self.p.num_output)
        out = _Margin.apply(flat, self.weight, lab, self.p.type, lam)
        out = out.reshape(tuple(x.shape[:self.axis]) + (self.p.num_output,))
        if len(self.param.top) == 1:
            return out
        return out, torch.full((1,), lam, dtype=x.dtype, device=x.device)


class _Center(torch.autograd.Function):
    """sum |x_i - c_(y_i)|^2 / M / 2; backward: x the derivative, the centers the fork's update."""

    @staticmethod
    def forward(ctx, x, centers, lab):
        d = x - centers[lab]
        ctx.save_for_backward(d, lab)
        ctx.classes = len(centers)
        return (d * d).sum() / len(x) / 2

    @staticmethod
    def backward(ctx, grad):
        d, lab = ctx.saved_tensors
        # c_j's diff: sum over its samples of (c_j - x_i), over 1 + their count, whatever the loss weight
        total = torch.zeros((ctx.classes, d.shape[1]), dtype=d.dtype, device=d.device).index_add_(0, lab, -d)
        n = torch.bincount(lab, minlength=ctx.classes).to(d.dtype)
        return grad * d / len(d), total / (1 + n)[:, None], None


@register
class CenterLoss(_Loss):
    """caffe-face's center loss: x (M, ... from ``axis``: K), label (M) -> (); one blob, the
    centers (num_output, K) filled by ``center_filler``.

    loss = sum_i |x_i - c_(y_i)|^2 / M / 2; x's gradient is top_diff (x_i - c_(y_i)) / M. The
    centers' diff is not the loss's gradient but the paper's update, as in the fork:
    c_j.diff = sum_(i: y_i = j) (c_j - x_i) / (1 + n_j), n_j the samples of class j in the batch,
    independent of the loss weight; the solver's rate (lr_mult) then plays the paper's alpha.
    """
    type = "CenterLoss"
    blob_names = ("centers",)

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        p = self.layer_param("center_loss_param")
        shape = bottom_shapes[0]
        axis = canonical_axis(p.axis, len(shape), self)
        if count(shape, 0, axis) != shape[0]:
            raise self.error(f"the feature starts at axis {axis}: the axes before it must be the batch only, "
                             f"found shape {shape}")
        if count(bottom_shapes[1]) != shape[0]:
            raise self.error(f"needs one label per sample ({shape[0]}), found shape {bottom_shapes[1]}")
        if p.num_output < 1:
            raise self.error("center_loss_param needs num_output >= 1")
        self.classes = p.num_output
        self.add_blob("centers", (p.num_output, count(shape, axis)), p.center_filler)

    def forward(self, x, label):
        lab = _labels(self, label, self.classes)
        return _Center.apply(x.reshape(len(x), -1), self.centers, lab)
