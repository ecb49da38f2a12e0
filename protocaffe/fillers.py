"""Caffe's weight fillers, as one table of small functions.

Each takes the tensor to fill in place, its FillerParameter and the net's
``torch.Generator``, so a whole net is initialized from one seed. In a net built
under a random seed the drawing fillers take Caffe's own values instead, from
Caffe's stream (:data:`CAFFES`, protocaffe.caffe_random), so a seeded net starts
from the weights Caffe's would. The distributions are Caffe's, with its fan-in and
fan-out definitions: ``fan_in = count / shape[0]``, ``fan_out = count / shape[1]``.
"""
import math

import numpy as np
import torch

from protocaffe import caffe_random
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2


def _fans(t):
    n = t.numel()
    fan_in = n // t.shape[0] if t.dim() > 0 and t.shape[0] else n
    fan_out = n // t.shape[1] if t.dim() > 1 and t.shape[1] else n
    return fan_in, fan_out


def _variance_n(t, p):
    """The n of Xavier/MSRA: fan_in, fan_out or their average, per ``variance_norm``."""
    fan_in, fan_out = _fans(t)
    norm = p.variance_norm
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def constant(t, p, g):
    t.fill_(p.value)


def uniform(t, p, g):
    t.uniform_(p.min, p.max, generator=g)


def gaussian(t, p, g):
    """N(mean, std); with ``sparse: k`` each weight is kept with probability k / shape[0]."""
    t.normal_(p.mean, p.std, generator=g)
    if p.sparse >= 0:
        if t.dim() < 1:
            raise CaffeError("gaussian filler with sparse needs a blob of at least 1 axis")
        keep = p.sparse / t.shape[0]
        mask = torch.empty_like(t).bernoulli_(keep, generator=g)
        t.mul_(mask)


def positive_unitball(t, p, g):
    """Uniform in [0, 1), then each of the shape[0] rows divided by its sum."""
    t.uniform_(0, 1, generator=g)
    rows = t.view(t.shape[0], -1)
    rows.div_(rows.sum(dim=1, keepdim=True))


def xavier(t, p, g):
    """Uniform in [-s, s] with s = sqrt(3 / n), n per ``variance_norm`` (default fan_in)."""
    scale = math.sqrt(3.0 / _variance_n(t, p))
    t.uniform_(-scale, scale, generator=g)


def msra(t, p, g):
    """N(0, sqrt(2 / n)), n per ``variance_norm`` (default fan_in)."""
    t.normal_(0.0, math.sqrt(2.0 / _variance_n(t, p)), generator=g)


def bilinear(t, p, g):
    """Bilinear upsampling kernels for Deconvolution: w(x, y) = (1 - |x/f - c|)(1 - |y/f - c|),
    f = ceil(k / 2), c = (2f - 1 - f % 2) / (2f), the same for every (out, in) pair."""
    if t.dim() != 4 or t.shape[2] != t.shape[3]:
        raise CaffeError(f"bilinear filler needs a 4-axis blob with square kernels, found {tuple(t.shape)}")
    k = t.shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    x = torch.arange(k, dtype=torch.float64)
    w = 1 - (x / f - c).abs()
    t.copy_((w[:, None] * w[None, :]).to(t.dtype).expand_as(t))


FILLERS = {
    "constant": constant,
    "uniform": uniform,
    "gaussian": gaussian,
    "positive_unitball": positive_unitball,
    "xavier": xavier,
    "msra": msra,
    "bilinear": bilinear,
}


def fill(tensor, filler_param, generator, caffe_stream=None):
    """Fill ``tensor`` in place as ``filler_param`` says: from Caffe's own stream when one is
    given (a seeded net: the values Caffe's filler writes, in float32, drawing what it
    draws), else from ``generator``."""
    fn = FILLERS.get(filler_param.type)
    if fn is None:
        raise CaffeError(f"unknown filler type '{filler_param.type}'; known: {', '.join(FILLERS)}")
    with torch.no_grad():
        if caffe_stream is not None and filler_param.type in CAFFES:
            values = CAFFES[filler_param.type](tuple(tensor.shape), filler_param, caffe_stream)
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(values).reshape(tuple(tensor.shape))))
        else:
            fn(tensor, filler_param, generator)
    return tensor


# ---- Caffe's own draws (protocaffe.caffe_random), float32 as Caffe's float build computes ----

F = np.float32


def _caffe_n(shape, p):
    """Xavier/MSRA's n in float, as Caffe: fan_in = count / shape[0], fan_out = count / shape[1]."""
    count = int(np.prod(shape))
    fan_in = F(count // shape[0]) if shape else F(count)
    fan_out = F(count // shape[1]) if len(shape) > 1 else F(count)
    if p.variance_norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    if p.variance_norm == caffe_pb2.FillerParameter.AVERAGE:
        return F(F(fan_in + fan_out) / F(2))
    return fan_in


def _caffe_gaussian(shape, p, stream):
    count = int(np.prod(shape))
    values = caffe_random.gaussian(stream, count, p.mean, p.std)
    if p.sparse >= 0:
        if len(shape) < 1:
            raise CaffeError("gaussian filler with sparse needs a blob of at least 1 axis")
        keep = caffe_random.bernoulli(stream, count, F(F(p.sparse) / F(shape[0])), np.float32)
        values = (values * keep).astype(np.float32)
    return values


def _caffe_xavier(shape, p, stream):
    scale = np.sqrt(F(3) / _caffe_n(shape, p))  # sqrt(Dtype(3) / n), in float
    return caffe_random.uniform(stream, int(np.prod(shape)), -scale, scale)


def _caffe_unitball(shape, p, stream):
    values = caffe_random.uniform(stream, int(np.prod(shape)), 0, 1).reshape(shape[0], -1)
    sums = np.zeros(len(values), np.float32)
    for j in range(values.shape[1]):  # Caffe sums each row left to right, in float
        sums = (sums + values[:, j]).astype(np.float32)
    return (values / sums[:, None]).astype(np.float32)


CAFFES = {
    "uniform": lambda shape, p, stream: caffe_random.uniform(stream, int(np.prod(shape)), p.min, p.max),
    "gaussian": _caffe_gaussian,
    "positive_unitball": _caffe_unitball,
    "xavier": _caffe_xavier,
    "msra": lambda shape, p, stream: caffe_random.gaussian(
        stream, int(np.prod(shape)), 0, np.sqrt(F(2) / _caffe_n(shape, p))),
}
"""Fillers that draw, as Caffe draws them; constant and bilinear draw nothing and are
computed as Caffe computes them either way."""
