"""Exporters of the detection forks' inference layers (protocaffe.layer_types.roi and yolo), added
to the same table as Caffe's own.

ROIPooling is ONNX's MaxRoiPool, which was specified after it (rounded scaled corners, the
end cell included, floor/ceil bins, empty bins 0). Reorg and Region are shuffles and
activations of ONNX primitives. PSROIPooling and the training layers (losses, OHEM) have no
ONNX form.
"""
from protocaffe.onnx_export.layers import _reshape, exports


@exports("ROIPooling")
def roi_pooling(g, layer, xs, shapes):
    rois = xs[1] if len(shapes[1]) == 2 else _reshape(g, layer, xs[1], (shapes[1][0], 5), keeps_batch=False)
    return [g.node("MaxRoiPool", [xs[0], rois], layer.name, pooled_shape=list(layer.pooled),
                   spatial_scale=float(layer.scale))]


@exports("Reorg")
def reorg(g, layer, xs, shapes):
    """darknet's shuffle as Reshape, Transpose, Reshape (see protocaffe.layer_types.yolo.Reorg)."""
    n, c, h, w = shapes[0]
    s, out_c = layer.stride, c // layer.stride ** 2
    if layer.reverse:
        x = _reshape(g, layer, xs[0], (n, s, s, out_c, h, w), keeps_batch=True)
        x = g.node("Transpose", [x], layer.name, perm=[0, 3, 4, 1, 5, 2])
        return [_reshape(g, layer, x, (n, out_c, h * s, w * s), keeps_batch=True)]
    x = _reshape(g, layer, xs[0], (n, out_c, h, s, w, s), keeps_batch=True)
    x = g.node("Transpose", [x], layer.name, perm=[0, 3, 5, 1, 2, 4])
    return [_reshape(g, layer, x, (n, c * s * s, h // s, w // s), keeps_batch=True)]


@exports("Region")
def region(g, layer, xs, shapes):
    """Per anchor: logistic of x, y and objectness, softmax over the classes, w, h as they are."""
    n, c, h, w = shapes[0]
    k = layer.coords
    x = _reshape(g, layer, xs[0], (n, layer.num, c // layer.num, h, w), keeps_batch=True)
    sizes = [2, k - 2, 1, layer.classes]
    parts = g.node("Split", [x, g.ints(sizes, f"{layer.name}/split")], layer.name, outputs=4, axis=2)
    out = [g.node("Sigmoid", [parts[0]], layer.name), parts[1], g.node("Sigmoid", [parts[2]], layer.name),
           g.node("Softmax", [parts[3]], layer.name, axis=2)]
    out = [p for p, size in zip(out, sizes) if size]
    return [_reshape(g, layer, g.node("Concat", out, layer.name, axis=2), shapes[0], keeps_batch=True)]
