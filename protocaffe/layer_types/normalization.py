"""Normalization and affine layers: BatchNorm, MVN, Normalize (SSD), Scale, Bias."""
import torch

from protocaffe.layer_types.base import Layer, canonical_axis, register
from protocaffe.proto import caffe_pb2


@register
class BatchNorm(Layer):
    """Normalizes each channel (axis 1) of (N, C, ...) to zero mean and unit variance; no affine part.

    Blobs, as in Caffe: running ``mean`` and ``variance`` sums and their ``scale_factor``
    (statistics = blob / scale_factor). Uses the running statistics when
    ``use_global_stats`` (default: in TEST); otherwise the batch's, and updates
    mean <- maf * mean + batch_mean, variance <- maf * variance + m/(m-1) batch_var,
    scale_factor <- maf * scale_factor + 1. Unlike PyTorch's BatchNorm there is no
    momentum average: the blobs are decayed sums. y = (x - mean) / sqrt(var + eps).
    """
    type = "BatchNorm"

    def setup(self, bottom_shapes):
        p = self.param.batch_norm_param
        self.use_global = p.use_global_stats if p.HasField("use_global_stats") else \
            self.phase == caffe_pb2.TEST
        self.fraction, self.eps = p.moving_average_fraction, p.eps
        channels = bottom_shapes[0][1] if len(bottom_shapes[0]) > 1 else 1
        for name, shape in (("mean", (channels,)), ("variance", (channels,)), ("scale_factor", (1,))):
            self.add_blob(name, shape, trainable=False)
        for spec in self.param.param:
            if spec.lr_mult != 0:
                raise self.error("its statistics cannot be learned: every param lr_mult must be 0")

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        if self.use_global:
            sf = self.scale_factor[0]
            factor = torch.where(sf == 0, torch.zeros_like(sf), 1 / sf)
            mean, var = self.mean * factor, self.variance * factor
        else:
            dims = [d for d in range(x.dim()) if d != 1]
            mean = x.mean(dim=dims)
            var = ((x - mean.view(view)) ** 2).mean(dim=dims)
            m = x.numel() // x.shape[1]
            with torch.no_grad():
                self.mean.mul_(self.fraction).add_(mean.detach())
                self.variance.mul_(self.fraction).add_(var.detach() * (m / max(m - 1, 1)))
                self.scale_factor.mul_(self.fraction).add_(1)
        return (x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)


@register
class MVN(Layer):
    """Mean-variance normalization of (N, C, H, W) per item and channel, or per item across channels.

    y = x - mean, and with ``normalize_variance`` y / (sqrt(var) + eps): Caffe adds eps
    to the standard deviation, not to the variance.
    """
    type = "MVN"

    def setup(self, bottom_shapes):
        p = self.param.mvn_param
        self.normalize, self.across, self.eps = p.normalize_variance, p.across_channels, p.eps

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        start = 1 if self.across else 2
        flat = x.reshape(tuple(x.shape[:start]) + (-1,))
        centred = flat - flat.mean(-1, keepdim=True)
        if self.normalize:
            centred = centred / ((centred ** 2).mean(-1, keepdim=True).sqrt() + self.eps)
        return centred.reshape(x.shape)


@register
class Normalize(Layer):
    """The SSD fork's L2 normalization with a learned scale: x (N, C, ...) -> same shape.

    y = s * x / sqrt(sum x^2 + eps): the sum runs over the channels at each position, or over
    the whole item with ``across_spatial``; s is one value (a 0-axis blob, ``channel_shared``)
    or one per channel (C,). Without ``scale_filler`` s starts at 1 (the fork's choice; the
    filler message's own default would give 0). SSD's conv4_3_norm: within positions, per
    channel, scale 20. With a per-channel s the gradient to x is the fork's, which is not
    the derivative (see _ScaledL2Norm).
    """
    type = "Normalize"

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"needs a bottom of at least 2 axes, found shape {shape}")
        p = self.layer_param("norm_param")
        self.across_spatial, self.eps = p.across_spatial, p.eps
        filler = p.scale_filler if p.HasField("scale_filler") else caffe_pb2.FillerParameter(type="constant", value=1)
        self.add_blob("weight", () if p.channel_shared else (shape[1],), filler)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        axes = tuple(range(1, x.dim())) if self.across_spatial else (1,)
        return _ScaledL2Norm.apply(x, _broadcast(self.weight, 1, x.dim()), axes, self.eps)


class _ScaledL2Norm(torch.autograd.Function):
    """y = x / n * s with n = sqrt(sum over ``axes`` of x^2 + eps) and s broadcast over x.

    Backward as the fork's Normalize: dx = s * (g - x (x . g) / n^2) / n, the dot over
    ``axes``. That is the derivative when s is one value; for a per-channel s the fork scales
    after projecting (the derivative would project s * g), and this keeps the fork's
    gradient. ds = sum of g * x / n over the axes s is broadcast along."""

    @staticmethod
    def forward(ctx, x, scale, axes, eps):
        norm = ((x * x).sum(axes, keepdim=True) + eps).sqrt()
        unit = x / norm
        ctx.save_for_backward(x, unit, norm, scale)
        ctx.axes = axes
        return unit * scale

    @staticmethod
    def backward(ctx, g):
        x, unit, norm, scale = ctx.saved_tensors
        dot = (x * g).sum(ctx.axes, keepdim=True)
        dx = (g - x * dot / (norm * norm)) / norm * scale
        summed = tuple(a for a in range(x.dim()) if scale.shape[a] == 1)
        return dx, (g * unit).sum(summed, keepdim=True), None, None


def _affine_shape(layer, p, bottom_shapes):
    """The axes ``axis`` .. ``axis + num_axes`` of bottom 0 that a Scale/Bias blob covers,
    or bottom 1's shape when it is given as a second bottom."""
    shape = bottom_shapes[0]
    axis = canonical_axis(p.axis, len(shape), layer) if shape else 0
    if len(bottom_shapes) > 1:
        other = tuple(bottom_shapes[1])
        if tuple(shape[axis:axis + len(other)]) != other:
            raise layer.error(f"bottom 1 of shape {other} must match bottom 0's axes from {axis}: "
                              f"{tuple(shape[axis:axis + len(other)])}")
        return axis, other
    if p.num_axes < -1:
        raise layer.error(f"num_axes must be -1 or more, found {p.num_axes}")
    end = len(shape) if p.num_axes == -1 else axis + p.num_axes
    if end > len(shape):
        raise layer.error(f"axis {axis} + num_axes {p.num_axes} exceeds the bottom's {len(shape)} axes")
    return axis, tuple(shape[axis:end])


def _broadcast(t, axis, ndim):
    """View a blob covering axes axis .. axis + t.dim() so it broadcasts over an ndim tensor."""
    return t.reshape((1,) * axis + tuple(t.shape) + (1,) * (ndim - axis - t.dim()))


@register
class Scale(Layer):
    """y = x * s (+ b): s a learned blob over axes ``axis`` .. ``axis + num_axes`` (filler default
    constant 1, as in Caffe), or bottom 1. ``bias_term`` adds a learned b of s's shape."""
    type = "Scale"
    num_bottoms = (1, 2)

    def setup(self, bottom_shapes):
        p = self.param.scale_param
        self.axis, shape = _affine_shape(self, p, bottom_shapes)
        if len(bottom_shapes) == 1:
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1)
            self.add_blob("weight", shape, filler)
        if p.bias_term:
            self.add_blob("bias", shape, p.bias_filler)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x, scale=None):
        scale = self.weight if scale is None else scale
        out = x * _broadcast(scale, self.axis, x.dim())
        if "bias" in self.blob_names:
            out = out + _broadcast(self.bias, self.axis, x.dim())
        return out


@register
class Bias(Layer):
    """y = x + b: b a learned blob over axes ``axis`` .. ``axis + num_axes``, or bottom 1."""
    type = "Bias"
    num_bottoms = (1, 2)

    def setup(self, bottom_shapes):
        p = self.param.bias_param
        self.axis, shape = _affine_shape(self, p, bottom_shapes)
        if len(bottom_shapes) == 1:
            self.add_blob("bias", shape, p.filler)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x, bias=None):
        bias = self.bias if bias is None else bias
        return x + _broadcast(bias, self.axis, x.dim())
