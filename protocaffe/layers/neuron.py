"""Neuron layers: elementwise functions, (any shape) -> the same shape.

Often used in place in prototxt (``bottom == top``); the net simply rebinds the
name, so none of these modifies its input.
"""
import math

import torch
import torch.nn.functional as F

from protocaffe.layers.base import Layer, register
from protocaffe.proto import caffe_pb2


class _Neuron(Layer):
    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]


@register
class ReLU(_Neuron):
    """max(x, 0) + negative_slope * min(x, 0)."""
    type = "ReLU"

    def forward(self, x):
        slope = self.param.relu_param.negative_slope
        return F.leaky_relu(x, slope) if slope else F.relu(x)


@register
class Sigmoid(_Neuron):
    """1 / (1 + exp(-x))."""
    type = "Sigmoid"

    def forward(self, x):
        return torch.sigmoid(x)


@register
class TanH(_Neuron):
    """tanh(x)."""
    type = "TanH"

    def forward(self, x):
        return torch.tanh(x)


@register
class AbsVal(_Neuron):
    """|x|; Caffe's gradient is sign(x) (0 at 0), as autograd's."""
    type = "AbsVal"

    def forward(self, x):
        return x.abs()


@register
class BNLL(_Neuron):
    """Binomial normal log likelihood: log(1 + exp(x)), computed stably."""
    type = "BNLL"

    def forward(self, x):
        return torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))


@register
class ELU(_Neuron):
    """x for x > 0, alpha (exp(x) - 1) otherwise."""
    type = "ELU"

    def forward(self, x):
        return F.elu(x, self.param.elu_param.alpha)


def _base_log(base):
    """ln(base), with Caffe's convention that base -1 means e."""
    return 1.0 if base == -1 else math.log(base)


@register
class Exp(_Neuron):
    """base ^ (shift + scale x); base -1 means e."""
    type = "Exp"

    def forward(self, x):
        p = self.param.exp_param
        return torch.exp((p.shift + p.scale * x) * _base_log(p.base))


@register
class Log(_Neuron):
    """log_base(shift + scale x); base -1 means e."""
    type = "Log"

    def forward(self, x):
        p = self.param.log_param
        return torch.log(p.shift + p.scale * x) / _base_log(p.base)


@register
class Power(_Neuron):
    """(shift + scale x) ^ power."""
    type = "Power"

    def forward(self, x):
        p = self.param.power_param
        return (p.shift + p.scale * x).pow(p.power)


@register
class PReLU(_Neuron):
    """max(x, 0) + a * min(x, 0), one learned slope per channel (axis 1) or one shared.

    Without a filler, Caffe starts the slopes at 0.25. A shared slope is a 0-axis blob, as in Caffe.
    """
    type = "PReLU"
    blob_names = ("weight",)

    def setup(self, bottom_shapes):
        p = self.param.prelu_param
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
        channels = bottom_shapes[0][1] if len(bottom_shapes[0]) > 1 else 1
        self.add_blob("weight", () if p.channel_shared else (channels,), filler)

    def forward(self, x):
        a = self.weight if self.param.prelu_param.channel_shared else \
            self.weight.view((1, -1) + (1,) * (x.dim() - 2))
        return torch.where(x > 0, x, a * x)


@register
class Threshold(_Neuron):
    """1 where x > threshold, else 0. No gradient."""
    type = "Threshold"

    def forward(self, x):
        return (x.detach() > self.param.threshold_param.threshold).to(x.dtype)


@register
class Dropout(_Neuron):
    """TRAIN: keep each unit with probability 1 - ratio and scale it by 1 / (1 - ratio); TEST: identity.

    The mask is drawn from the net's generator, so a seeded run repeats.
    """
    type = "Dropout"

    def forward(self, x):
        if self.phase != caffe_pb2.TRAIN:
            return x
        ratio = self.param.dropout_param.dropout_ratio
        keep = torch.rand(x.shape, generator=self.ctx.generator) >= ratio
        return x * keep.to(device=x.device, dtype=x.dtype) * (1.0 / (1.0 - ratio))


@register
class Swish(_Neuron):
    """x * sigmoid(beta x)."""
    type = "Swish"

    def forward(self, x):
        return x * torch.sigmoid(self.param.swish_param.beta * x)


@register
class Clip(_Neuron):
    """min(max(x, min), max)."""
    type = "Clip"

    def forward(self, x):
        return x.clamp(self.param.clip_param.min, self.param.clip_param.max)
