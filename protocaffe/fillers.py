"""Caffe's weight fillers, as one table of small functions.

Each takes the tensor to fill in place, its FillerParameter and the net's
``torch.Generator``, so a whole net is initialized from one seed. Caffe's own
random streams are not reproduced bit for bit (it uses boost's mt19937); the
distributions are Caffe's, with its fan-in and fan-out definitions:
``fan_in = count / shape[0]``, ``fan_out = count / shape[1]``.
"""
import math

import torch

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
        if t.dim() < 2:
            raise CaffeError("gaussian filler with sparse needs a blob of at least 2 axes")
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


def fill(tensor, filler_param, generator):
    """Fill ``tensor`` in place as ``filler_param`` says."""
    fn = FILLERS.get(filler_param.type)
    if fn is None:
        raise CaffeError(f"unknown filler type '{filler_param.type}'; known: {', '.join(FILLERS)}")
    with torch.no_grad():
        fn(tensor, filler_param, generator)
    return tensor
