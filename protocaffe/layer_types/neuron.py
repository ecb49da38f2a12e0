"""Neuron layers: elementwise functions, (any shape) -> the same shape.

Often used in place in prototxt (``bottom == top``); the net simply rebinds the
name, so none of these modifies its input.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from protocaffe import caffe_random, schema
from protocaffe.layer_types.base import Layer, register
from protocaffe.proto import caffe_pb2
from protocaffe.proto.forks import faster_rcnn_pb2  # noqa: F401 (DropoutParameter.scale_train)


class _Neuron(Layer):
    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]


@register
class ReLU(_Neuron):
    """max(x, 0) + negative_slope * min(x, 0); x (any) -> same shape.

    The gradient at exactly 0 is negative_slope (Caffe takes x > 0 as the positive side).
    """
    type = "ReLU"

    def forward(self, x):
        slope = self.param.relu_param.negative_slope
        return F.leaky_relu(x, slope) if slope else F.relu(x)


@register
class Sigmoid(_Neuron):
    """1 / (1 + exp(-x)); x (any) -> same shape."""
    type = "Sigmoid"

    def forward(self, x):
        return torch.sigmoid(x)


@register
class TanH(_Neuron):
    """tanh(x); x (any) -> same shape."""
    type = "TanH"

    def forward(self, x):
        return torch.tanh(x)


@register
class AbsVal(_Neuron):
    """|x|; x (any) -> same shape. Caffe's gradient is sign(x), 0 at 0, as autograd's."""
    type = "AbsVal"

    def forward(self, x):
        return x.abs()


@register
class BNLL(_Neuron):
    """Binomial normal log likelihood log(1 + exp(x)); x (any) -> same shape.

    This is PyTorch's softplus; its linear branch above x = 20 equals Caffe's
    value in float32, and its gradient stays finite for any x.
    """
    type = "BNLL"

    def forward(self, x):
        return F.softplus(x)


@register
class ELU(_Neuron):
    """x for x > 0, alpha (exp(x) - 1) otherwise; x (any) -> same shape."""
    type = "ELU"

    def forward(self, x):
        return F.elu(x, self.param.elu_param.alpha)


def _log_base(layer, base):
    """ln(base) for Exp and Log; Caffe's base -1 stands for e, any other base must be positive."""
    if base == -1:
        return 1.0
    if not base > 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), found {base}")
    return math.log(base)


@register
class Exp(_Neuron):
    """base ^ (shift + scale x); x (any) -> same shape. base -1 (the default) means e."""
    type = "Exp"

    def setup(self, bottom_shapes):
        self.ln_base = _log_base(self, self.param.exp_param.base)

    def forward(self, x):
        p = self.param.exp_param
        return torch.exp((p.shift + p.scale * x) * self.ln_base)


@register
class Log(_Neuron):
    """log_base(shift + scale x); x (any) -> same shape. base -1 (the default) means e."""
    type = "Log"

    def setup(self, bottom_shapes):
        self.ln_base = _log_base(self, self.param.log_param.base)

    def forward(self, x):
        p = self.param.log_param
        return torch.log(p.shift + p.scale * x) / self.ln_base


@register
class Power(_Neuron):
    """(shift + scale x) ^ power; x (any) -> same shape. power 0 gives ones and no gradient."""
    type = "Power"

    def forward(self, x):
        p = self.param.power_param
        return (p.shift + p.scale * x).pow(p.power)


@register
class PReLU(_Neuron):
    """max(x, 0) + a * min(x, 0) with a learned slope a; x (N, C, ...) -> same shape.

    ``weight`` holds one slope per channel (C,), or with ``channel_shared`` a single
    slope stored as a 0-axis blob, as Caffe saves it. Without a ``filler`` Caffe
    starts the slopes at the constant 0.25 (hard-coded in Caffe, not a proto default).
    """
    type = "PReLU"

    def setup(self, bottom_shapes):
        if len(bottom_shapes[0]) < 2:
            raise self.error(f"needs a bottom with at least 2 axes, found shape {bottom_shapes[0]}")
        p = self.param.prelu_param
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.add_blob("weight", () if p.channel_shared else (bottom_shapes[0][1],), filler)

    def forward(self, x):
        a = self.weight if self.weight.dim() == 0 else self.weight.view((1, -1) + (1,) * (x.dim() - 2))
        return torch.where(x > 0, x, a * x)


@register
class Threshold(_Neuron):
    """1 where x > threshold, else 0; x (any) -> same shape. No gradient, as in Caffe."""
    type = "Threshold"

    def forward(self, x):
        return (x.detach() > self.param.threshold_param.threshold).to(x.dtype)


@register
class Dropout(_Neuron):
    """x (any) -> same shape. TRAIN: each unit kept with probability 1 - dropout_ratio and
    scaled by 1 / (1 - dropout_ratio) (inverted dropout, as Caffe); TEST: identity.

    Faster R-CNN's ``scale_train: false`` (proto/forks/faster_rcnn.proto) moves the scaling to
    TEST: TRAIN keeps the units unscaled, TEST multiplies by 1 - dropout_ratio (as the fork,
    1 / scale in float32).

    The mask is drawn on x's device from the net's generator there, so a seeded run repeats;
    on the CPU in a net under a random seed it is Caffe's own (caffe_rng_bernoulli from
    Caffe's stream, protocaffe.caffe_random).
    """
    type = "Dropout"

    def setup(self, bottom_shapes):
        p = self.param.dropout_param
        if not 0 <= p.dropout_ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), found {p.dropout_ratio}")
        threshold = float(np.float32(p.dropout_ratio))
        self.scale = float(np.float32(1.0 / (1.0 - threshold)))  # Caffe's Dtype scale_
        self.scale_train = schema.get(p, "scale_train")

    def forward(self, x):
        if self.phase != caffe_pb2.TRAIN:
            return x if self.scale_train else x * float(np.float32(1.0 / self.scale))
        ratio = self.param.dropout_param.dropout_ratio
        stream = self.ctx.caffes() if x.device.type == "cpu" else None
        if stream is not None:  # Caffe's CPU mask and float scale (on a GPU Caffe draws with cuRAND)
            keep = caffe_random.bernoulli(stream, x.numel(), 1.0 - float(np.float32(ratio)))
            keep, scale = torch.from_numpy(keep.reshape(tuple(x.shape))).to(x.dtype), self.scale
        else:
            keep = torch.rand(x.shape, generator=self.ctx.generator_on(x.device), device=x.device) >= ratio
            keep, scale = keep.to(x.dtype), 1.0 / (1.0 - ratio)
        return x * keep * scale if self.scale_train else x * keep


@register
class Swish(_Neuron):
    """x * sigmoid(beta x); x (any) -> same shape."""
    type = "Swish"

    def forward(self, x):
        return x * torch.sigmoid(self.param.swish_param.beta * x)


@register
class Clip(_Neuron):
    """min(max(x, min), max); x (any) -> same shape. The gradient passes where min <= x <= max."""
    type = "Clip"

    def forward(self, x):
        return x.clamp(self.param.clip_param.min, self.param.clip_param.max)
