"""One exporter per Caffe layer type, in a table keyed by the prototxt ``type``.

Each exporter is ``fn(g, layer, xs, shapes) -> [value per top]``: ``g`` the
:class:`~protocaffe.onnx_export.graph.Graph`, ``layer`` the built protocaffe layer (its
kernel, stride, pad and output sizes already resolved), ``xs`` the ONNX values of its
bottoms and ``shapes`` their static shapes. Where Caffe's arithmetic differs from the ONNX
op's, the exporter writes Caffe's out of ONNX primitives instead of approximating it.
"""
import math

import numpy as np
import torch

from protocaffe.proto import caffe_pb2

MAX, AVE = caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE
SUM, PROD = caffe_pb2.EltwiseParameter.SUM, caffe_pb2.EltwiseParameter.PROD
EXPORTERS = {}
"""Caffe ``type`` string -> exporter function."""


def exports(*types):
    def add(fn):
        for t in types:
            EXPORTERS[t] = fn
        return fn
    return add


def _trailing(blob_ndim, axis, ndim):
    """Trailing 1s that make a blob covering axes axis .. axis + blob_ndim broadcast over ndim axes."""
    return (1,) * (ndim - axis - blob_ndim)


def _reshape(g, layer, x, shape, keeps_batch):
    """Reshape to a static ``shape``; with a dynamic batch axis 0 is copied (ONNX's 0)."""
    if not keeps_batch:
        g.fixed_batch(layer, "it reshapes the batch axis")
    target = [0] + list(shape[1:]) if g.dynamic_batch else list(shape)
    return g.node("Reshape", [x, g.ints(target, f"{layer.name}/shape")], layer.name)


# ---- vision ------------------------------------------------------------------

def _conv_attrs(layer):
    return dict(kernel_shape=list(layer.kernel), strides=list(layer.stride), pads=list(layer.pad) * 2,
                dilations=list(layer.dilation), group=layer.group)


def _weights(g, layer):
    blobs = [g.const(layer.weight, f"{layer.name}/weight")]
    if layer.bias is not None:
        blobs.append(g.const(layer.bias, f"{layer.name}/bias"))
    return blobs


def _channels_at_axis_1(layer):
    if layer.axis != 1:
        raise layer.error(f"convolves with its channel axis at {layer.axis}; only axis 1 has an ONNX form")


@exports("Convolution")
def convolution(g, layer, xs, shapes):
    _channels_at_axis_1(layer)
    attrs = _conv_attrs(layer)
    extra = layer.overhang(*shapes[0][2:])  # a window larger than the padded input: zeros past the end
    attrs["pads"] = list(layer.pad) + [p + e for p, e in zip(layer.pad, extra)]
    return [g.node("Conv", xs + _weights(g, layer), layer.name, **attrs)]


@exports("Deconvolution")
def deconvolution(g, layer, xs, shapes):
    """Caffe's (C, num_output / group, kh, kw) weight is ONNX ConvTranspose's layout."""
    _channels_at_axis_1(layer)
    return [g.node("ConvTranspose", xs + _weights(g, layer), layer.name, **_conv_attrs(layer))]


def _pool_end_pads(layer, in_size, out_size):
    """End padding that makes an ONNX pool (floor rounding) give the layer's own output size.

    Caffe's last window may run past the padded input; padding the end by the overhang
    reproduces it: floor((H + pad + end - k) / s) + 1 = H'. Every window then still
    holds at least one input value (Caffe drops a window starting in the padding).
    """
    ends = []
    for size, out, k, s, p in zip(in_size, out_size, layer.kernel, layer.stride, layer.pad):
        if (out - 1) * s - p >= size:
            raise layer.error(f"its last window starts past the input ({size} values, kernel {k} "
                              f"< stride {s}) and holds no input value (Caffe outputs -FLT_MAX for MAX, "
                              f"0 for AVE there); it has no ONNX form")
        ends.append(max(0, (out - 1) * s + k - size - p))
    return ends


@exports("Pooling")
def pooling(g, layer, xs, shapes):
    """MAX: MaxPool with Caffe's pads (padding never wins). AVE: zero Pad, AveragePool (sum / kh kw),
    then times kh kw / Caffe's divisor, the window clipped to [-pad, H + pad) (so padding counts,
    the overhang past it does not). Global pooling: GlobalMaxPool / GlobalAveragePool."""
    if layer.with_mask:
        raise layer.error("its argmax mask top (SegNet's) has no faithful ONNX form here")
    if layer.method not in (MAX, AVE):
        raise layer.error("STOCHASTIC pooling draws at random in TRAIN and has no ONNX pooling op; "
                          "only MAX and AVE pooling export")
    is_max = layer.method == MAX
    if layer.global_pooling:
        return [g.node("GlobalMaxPool" if is_max else "GlobalAveragePool", xs, layer.name)]
    in_size = shapes[0][2:]
    out_size = layer.top_shapes(shapes)[0][2:]
    pads = list(layer.pad) + _pool_end_pads(layer, in_size, out_size)
    attrs = dict(kernel_shape=list(layer.kernel), strides=list(layer.stride))
    if is_max:
        return [g.node("MaxPool", xs, layer.name, pads=pads, **attrs)]
    x = xs[0]
    if any(pads):
        x = g.node("Pad", [x, g.ints([0, 0] + pads[:2] + [0, 0] + pads[2:], f"{layer.name}/pads")],
                   layer.name)
    y = g.node("AveragePool", [x], layer.name, **attrs)
    correction = math.prod(layer.kernel) / layer._divisor(*in_size, torch.device("cpu")).double()
    if torch.any(correction != 1):
        y = g.node("Mul", [y, g.const(correction, f"{layer.name}/divisor")], layer.name)
    return [y]


@exports("LRN")
def lrn(g, layer, xs, shapes):
    """ACROSS_CHANNELS is ONNX LRN exactly (both scale alpha by 1 / size; bias is Caffe's k).
    WITHIN_CHANNEL: x (1 + alpha mean(x^2 over a size x size patch, zero padding counted))^-beta."""
    if layer.across:
        return [g.node("LRN", xs, layer.name, size=layer.size, alpha=layer.alpha, beta=layer.beta,
                       bias=layer.k)]
    x, half, name = xs[0], (layer.size - 1) // 2, layer.name
    mean = g.node("AveragePool", [g.node("Mul", [x, x], name)], name, kernel_shape=[layer.size] * 2,
                  pads=[half] * 4, count_include_pad=1)
    scale = g.node("Add", [g.node("Mul", [mean, g.const(layer.alpha, f"{name}/alpha")], name),
                           g.const(1, f"{name}/one")], name)
    return [g.node("Mul", [x, g.node("Pow", [scale, g.const(-layer.beta, f"{name}/beta")], name)], name)]


@exports("InnerProduct")
def inner_product(g, layer, xs, shapes):
    """Axes from ``axis`` on flattened to K; then Gemm with Caffe's (num_output, K) weight (or
    (K, num_output) with ``transpose``) when that leaves 2 axes, else MatMul and Add."""
    x, shape = xs[0], shapes[0]
    if len(shape) > layer.axis + 1:
        x = _reshape(g, layer, x, tuple(shape[:layer.axis]) + (math.prod(shape[layer.axis:]),),
                     layer.axis > 0)
    name = layer.name
    if layer.axis == 1:
        return [g.node("Gemm", [x] + _weights(g, layer), name, transB=int(not layer.transpose))]
    weight = layer.weight if layer.transpose else layer.weight.t()
    y = g.node("MatMul", [x, g.const(weight, f"{name}/weight")], name)
    if layer.bias is not None:
        y = g.node("Add", [y, g.const(layer.bias, f"{name}/bias")], name)
    return [y]


@exports("Crop")
def crop(g, layer, xs, shapes):
    if layer.axis == 0:
        g.fixed_batch(layer, "it crops the batch axis")
    a, b = shapes
    axes = list(range(layer.axis, len(a)))
    ends = [off + b[d] for off, d in zip(layer.offsets, axes)]
    name = layer.name
    return [g.node("Slice", [xs[0], g.ints(layer.offsets, f"{name}/starts"), g.ints(ends, f"{name}/ends"),
                             g.ints(axes, f"{name}/axes")], name)]


# ---- neurons -------------------------------------------------------------------

@exports("ReLU")
def relu(g, layer, xs, shapes):
    slope = layer.param.relu_param.negative_slope
    if slope:
        return [g.node("LeakyRelu", xs, layer.name, alpha=slope)]
    return [g.node("Relu", xs, layer.name)]


@exports("Sigmoid", "TanH", "AbsVal", "BNLL")
def elementwise(g, layer, xs, shapes):
    """The one-op neurons; BNLL log(1 + e^x) is Softplus."""
    op = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}[layer.type]
    return [g.node(op, xs, layer.name)]


@exports("ELU")
def elu(g, layer, xs, shapes):
    return [g.node("Elu", xs, layer.name, alpha=layer.param.elu_param.alpha)]


def _affine(g, layer, x, scale, shift):
    """shift + scale x, leaving out a multiply by 1 and an add of 0."""
    if scale != 1:
        x = g.node("Mul", [x, g.const(scale, f"{layer.name}/scale")], layer.name)
    if shift != 0:
        x = g.node("Add", [x, g.const(shift, f"{layer.name}/shift")], layer.name)
    return x


@exports("Power")
def power(g, layer, xs, shapes):
    p = layer.param.power_param
    y = _affine(g, layer, xs[0], p.scale, p.shift)
    if p.power != 1:
        y = g.node("Pow", [y, g.const(p.power, f"{layer.name}/power")], layer.name)
    return [y]


@exports("Exp")
def exp(g, layer, xs, shapes):
    """base^(shift + scale x) = e^((shift + scale x) ln base)."""
    p = layer.param.exp_param
    y = _affine(g, layer, xs[0], p.scale, p.shift)
    if layer.ln_base != 1:
        y = g.node("Mul", [y, g.const(layer.ln_base, f"{layer.name}/ln_base")], layer.name)
    return [g.node("Exp", [y], layer.name)]


@exports("Log")
def log(g, layer, xs, shapes):
    p = layer.param.log_param
    y = g.node("Log", [_affine(g, layer, xs[0], p.scale, p.shift)], layer.name)
    if layer.ln_base != 1:
        y = g.node("Div", [y, g.const(layer.ln_base, f"{layer.name}/ln_base")], layer.name)
    return [y]


@exports("PReLU")
def prelu(g, layer, xs, shapes):
    """One slope per channel (axis 1), or one shared slope."""
    slope = layer.weight.detach()
    if slope.dim():
        slope = slope.reshape((-1,) + _trailing(1, 1, len(shapes[0])))
    return [g.node("PRelu", xs + [g.const(slope, f"{layer.name}/slope")], layer.name)]


@exports("Threshold")
def threshold(g, layer, xs, shapes):
    """1 where x > threshold, else 0, in the input's type."""
    t = g.const(layer.param.threshold_param.threshold, f"{layer.name}/threshold")
    return [g.node("Cast", [g.node("Greater", xs + [t], layer.name)], layer.name, to=g.elem_type)]


@exports("Clip")
def clip(g, layer, xs, shapes):
    p = layer.param.clip_param
    return [g.node("Clip", xs + [g.const(p.min, f"{layer.name}/min"), g.const(p.max, f"{layer.name}/max")],
                   layer.name)]


@exports("Swish")
def swish(g, layer, xs, shapes):
    x = xs[0]
    beta = layer.param.swish_param.beta
    z = x if beta == 1 else g.node("Mul", [x, g.const(beta, f"{layer.name}/beta")], layer.name)
    return [g.node("Mul", [x, g.node("Sigmoid", [z], layer.name)], layer.name)]


@exports("Dropout")
def dropout(g, layer, xs, shapes):
    """The identity in TEST (times 1 - ratio with Faster R-CNN's scale_train: false); a
    TRAIN-phase dropout draws random masks and has no faithful form."""
    if layer.phase == caffe_pb2.TRAIN:
        raise layer.error("drops units at random in the TRAIN phase; export the net in the TEST phase")
    if layer.scale_train:
        return xs
    return [g.node("Mul", [xs[0], g.const(np.float32(1 / layer.scale), f"{layer.name}/keep")], layer.name)]


@exports("Softmax")
def softmax(g, layer, xs, shapes):
    """ONNX Softmax (opset 13 on) normalizes along one axis, as Caffe's does."""
    return [g.node("Softmax", xs, layer.name, axis=layer.axis)]


# ---- normalization and affine ------------------------------------------------------

@exports("BatchNorm")
def batch_norm(g, layer, xs, shapes):
    """(x - mean / s) / sqrt(variance / s + eps), s the scale-factor blob (0 reads as 1 / s = 0):
    ONNX BatchNormalization with scale 1 and bias 0."""
    if not layer.use_global:
        raise layer.error("normalizes with each batch's own statistics (use_global_stats false); "
                          "export the net in the TEST phase")
    sf = layer.scale_factor[0]
    factor = torch.where(sf == 0, torch.zeros_like(sf), 1 / sf)
    c, name = layer.mean.shape[0], layer.name
    inputs = [g.const(np.ones(c), f"{name}/scale"), g.const(np.zeros(c), f"{name}/bias"),
              g.const(layer.mean * factor, f"{name}/mean"),
              g.const(layer.variance * factor, f"{name}/variance")]
    return [g.node("BatchNormalization", xs + inputs, name, epsilon=layer.eps)]


@exports("MVN")
def mvn(g, layer, xs, shapes):
    """x - mean, and with ``normalize_variance`` divided by (std + eps), Caffe's eps on the
    standard deviation. Means over each item's channel (or whole item, ``across_channels``):
    GlobalAveragePool of the values laid out as (N, C, H W) (or (N, 1, C H W))."""
    shape, name = shapes[0], layer.name
    rows = (shape[0], 1) if layer.across else tuple(shape[:2])
    flat = _reshape(g, layer, xs[0], rows + (math.prod(shape) // math.prod(rows),), True)
    y = g.node("Sub", [flat, g.node("GlobalAveragePool", [flat], name)], name)
    if layer.normalize:
        var = g.node("GlobalAveragePool", [g.node("Mul", [y, y], name)], name)
        std = g.node("Add", [g.node("Sqrt", [var], name), g.const(layer.eps, f"{name}/eps")], name)
        y = g.node("Div", [y, std], name)
    return [_reshape(g, layer, y, shape, True)]


def _blob(g, layer, tensor, ndim, what):
    """A Scale/Bias blob over axes axis .. axis + tensor.dim(), shaped to broadcast over ndim axes."""
    shape = tuple(tensor.shape) + _trailing(tensor.dim(), layer.axis, ndim)
    return g.const(tensor.detach().reshape(shape), f"{layer.name}/{what}")


def _bottom_blob(g, layer, x, shape, ndim):
    """Bottom 1 of Scale/Bias, given unsqueezed so it broadcasts from ``axis``."""
    extra = len(_trailing(len(shape), layer.axis, ndim))
    if not extra:
        return x
    axes = g.ints(list(range(len(shape), len(shape) + extra)), f"{layer.name}/axes")
    return g.node("Unsqueeze", [x, axes], layer.name)


@exports("Scale")
def scale(g, layer, xs, shapes):
    """x * s (+ b), s the weight blob or bottom 1, broadcast from ``axis``."""
    ndim = len(shapes[0])
    s = (_blob(g, layer, layer.weight, ndim, "scale") if len(xs) == 1
         else _bottom_blob(g, layer, xs[1], shapes[1], ndim))
    y = g.node("Mul", [xs[0], s], layer.name)
    if "bias" in layer.blob_names:
        y = g.node("Add", [y, _blob(g, layer, layer.bias, ndim, "bias")], layer.name)
    return [y]


@exports("Bias")
def bias(g, layer, xs, shapes):
    ndim = len(shapes[0])
    b = (_blob(g, layer, layer.bias, ndim, "bias") if len(xs) == 1
         else _bottom_blob(g, layer, xs[1], shapes[1], ndim))
    return [g.node("Add", [xs[0], b], layer.name)]


# ---- blob shuffling ------------------------------------------------------------------

@exports("Concat")
def concat(g, layer, xs, shapes):
    return [g.node("Concat", xs, layer.name, axis=layer.axis)] if len(xs) > 1 else xs


@exports("Slice")
def slice_(g, layer, xs, shapes):
    """ONNX Split at Caffe's slice points (sizes computed by the layer)."""
    if len(layer.sizes) == 1:
        return xs
    if layer.axis == 0:
        g.fixed_batch(layer, "it slices the batch axis")
    sizes = g.ints(layer.sizes, f"{layer.name}/split")
    return g.node("Split", xs + [sizes], layer.name, outputs=len(layer.sizes), axis=layer.axis)


@exports("Split")
def split(g, layer, xs, shapes):
    """Several names for one value."""
    return xs * len(layer.param.top)


@exports("Silence")
def silence(g, layer, xs, shapes):
    return []


@exports("Eltwise")
def eltwise(g, layer, xs, shapes):
    """SUM: c0 x0 + c1 x1 + ... in bottom order (a coefficient of 1 is no multiply); PROD; MAX."""
    if layer.op not in (SUM, PROD):
        return [g.node("Max", xs, layer.name)]
    terms = xs
    if layer.op == SUM:
        terms = [x if c == 1 else g.node("Mul", [x, g.const(c, f"{layer.name}/coeff")], layer.name)
                 for c, x in zip(layer.coeff, xs)]
    y = terms[0]
    for t in terms[1:]:
        y = g.node("Add" if layer.op == SUM else "Mul", [y, t], layer.name)
    return [y]


@exports("Flatten")
def flatten(g, layer, xs, shapes):
    return [_reshape(g, layer, xs[0], layer.top_shapes(shapes)[0], layer.start > 0)]


@exports("Reshape")
def reshape(g, layer, xs, shapes):
    keeps_batch = layer.start > 0 or (layer.end > 0 and layer.dims[:1] == [0])
    return [_reshape(g, layer, xs[0], layer.top_shapes(shapes)[0], keeps_batch)]


@exports("Tile")
def tile(g, layer, xs, shapes):
    repeats = [layer.tiles if d == layer.axis else 1 for d in range(len(shapes[0]))]
    return [g.node("Tile", xs + [g.ints(repeats, f"{layer.name}/repeats")], layer.name)]
