"""Exporters of the forks' layer types (protocaffe.layer_types.segmentation and mobile), added to
the same table as Caffe's own. Refused, each naming the layer: SegNet's max-unpooling Upsample
and Pooling's mask top (ONNX's MaxUnpool takes MaxPool's batch-flat indices and leaves repeated
indices undefined), and BN layers normalizing by each batch (SegNet's LEARN, PSPNet's in TRAIN)."""
from protocaffe.onnx_export.layers import _reshape, convolution, exports
from protocaffe.proto import caffe_pb2

exports("ConvolutionDepthwise", "DepthwiseConvolution")(convolution)


@exports("ReLU6")
def relu6(g, layer, xs, shapes):
    """Clip(x, 0, 6), or Clip(LeakyRelu(x), max 6) with a negative_slope (non-negative)."""
    name = layer.name
    if layer.slope < 0:
        raise layer.error(f"negative_slope {layer.slope} < 0 has no exact ONNX form here")
    if not layer.slope:
        return [g.node("Clip", xs + [g.const(0, f"{name}/min"), g.const(6, f"{name}/max")], name)]
    leaky = g.node("LeakyRelu", xs, name, alpha=layer.slope)
    return [g.node("Clip", [leaky, "", g.const(6, f"{name}/max")], name)]


@exports("ShuffleChannel")
def shuffle_channel(g, layer, xs, shapes):
    """(N, g, C/g, rest) transposed to (N, C/g, g, rest), back to the input's shape."""
    shape = shapes[0]
    rest = 1
    for d in shape[2:]:
        rest *= d
    split = _reshape(g, layer, xs[0], (shape[0], layer.group, shape[1] // layer.group, rest), True)
    swapped = g.node("Transpose", [split], layer.name, perm=[0, 2, 1, 3])
    return [_reshape(g, layer, swapped, shape, True)]


@exports("Axpy")
def axpy(g, layer, xs, shapes):
    """a * x + y with a as (N, C, 1, ...)."""
    a, x, y = xs
    a = _reshape(g, layer, a, tuple(shapes[0][:2]) + (1,) * (len(shapes[1]) - 2), True)
    return [g.node("Add", [g.node("Mul", [a, x], layer.name), y], layer.name)]


@exports("Interp")
def interp(g, layer, xs, shapes):
    """The crop by pad_beg/pad_end (Slice), then Resize, linear with aligned corners, to the
    fork's output size (which fixes the batch axis in ONNX's sizes input)."""
    n, c, h, w = shapes[0]
    (ch, cw), (oh, ow) = layer._sizes(h, w)
    x, name = xs[0], layer.name
    if (ch, cw) != (h, w):
        start = -layer.pad_beg
        x = g.node("Slice", [x, g.ints([start, start], f"{name}/starts"),
                             g.ints([start + ch, start + cw], f"{name}/ends"), g.ints([2, 3], f"{name}/axes")], name)
    if (ch, cw) == (oh, ow):
        return [x]
    g.fixed_batch(layer, "ONNX's Resize takes the full output size")
    return [g.node("Resize", [x, "", "", g.ints([n, c, oh, ow], f"{name}/sizes")], name, mode="linear",
                   coordinate_transformation_mode="align_corners")]


@exports("Upsample")
def upsample(g, layer, xs, shapes):
    """The YOLO ports' nearest-neighbour Upsample: Resize by an integer factor, each output
    reading input floor(i / s)."""
    if layer.unpool:
        raise layer.error("SegNet's max-unpooling has no faithful ONNX form here (MaxUnpool takes MaxPool's "
                          "batch-flat indices)")
    s = float(layer.scale)
    return [g.node("Resize", [xs[0], "", g.const([1, 1, s, s], f"{layer.name}/scales")], layer.name,
                   mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")]


@exports("BN")
def bn(g, layer, xs, shapes):
    """SegNet's INFERENCE: scale x + shift. PSPNet's on running statistics (frozen, or TEST):
    (x - mean) * (var + eps)^-1/2 * slope + bias, in the fork's order."""
    name, c = layer.name, shapes[0][1]
    view = (1, c) + (1,) * (len(shapes[0]) - 2)
    if layer.segnet and layer.learn or not layer.segnet and not (layer.frozen or layer.phase == caffe_pb2.TEST):
        raise layer.error("normalizes with each batch's own statistics; export a net in INFERENCE mode (SegNet) "
                          "or in the TEST phase (PSPNet)")
    x = xs[0]
    if not layer.segnet:
        inverse = (layer.variance + layer.eps).rsqrt()
        x = g.node("Sub", [x, g.const(layer.mean.reshape(view), f"{name}/mean")], name)
        x = g.node("Mul", [x, g.const(inverse.reshape(view), f"{name}/inverse_std")], name)
    x = g.node("Mul", [x, g.const(layer.weight.reshape(view), f"{name}/scale")], name)
    return [g.node("Add", [x, g.const(layer.bias.reshape(view), f"{name}/shift")], name)]
