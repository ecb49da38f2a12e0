"""Normalization and affine layers: BatchNorm, MVN, Scale, Bias."""
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
