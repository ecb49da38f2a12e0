"""A built protocaffe net as an ONNX model, with Caffe's arithmetic kept exact.

    model = to_onnx(net)                  # one plain loop over the plan, one exporter per type
    export_onnx(net, "net.onnx")          # the same, shape-inferred, checked and written

Inputs are named after the Caffe input blobs, outputs after ``net.output_names``; the
weights are embedded. Each layer type has one exporter in
:mod:`protocaffe.onnx_export.layers`, written against the built layer (its resolved
kernel, stride, pad and output sizes), not traced through PyTorch. A type without a
faithful ONNX form is a CaffeError naming the layer and its type.

Needs the optional ``onnx`` package (``pip install -e '.[onnx]'``).
"""
import os

from protocaffe.errors import CaffeError, MissingExtraError

try:
    import onnx
    from onnx import helper
except ImportError as e:
    raise MissingExtraError("ONNX export needs the onnx package: pip install -e '.[onnx]'",
                            name=e.name) from None

from protocaffe.onnx_export.graph import DTYPES, Graph  # noqa: E402
from protocaffe.onnx_export.layers import EXPORTERS  # noqa: E402
from protocaffe.onnx_export import detection, forks, ssd  # noqa: E402,F401 (the forks' exporters)

MIN_OPSET = 13
"""Softmax on one axis, Split/Unsqueeze/Pad with sizes as inputs: ONNX opset 13 and later."""
DEFAULT_OPSET = 17


def _caffe_net(net):
    """The CaffeNet under a pycaffe-style Net, or the CaffeNet itself."""
    return getattr(net, "module", net)


def _check_options(opset, precision):
    latest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= latest:
        raise CaffeError(f"opset must be between {MIN_OPSET} and {latest} (this onnx package's "
                         f"newest), found {opset}")
    if precision not in DTYPES:
        raise CaffeError(f"precision must be one of {', '.join(DTYPES)}, found '{precision}'")


def _export_layer(g, layer, xs, shapes):
    export = EXPORTERS.get(layer.type)
    if export is None:
        raise layer.error("has no faithful ONNX form, so the net cannot be exported; exportable "
                          f"types: {', '.join(sorted(EXPORTERS))}")
    return export(g, layer, xs, shapes)


def _needed(plan, outputs):
    """The inputs and the steps of ``plan`` that the blobs ``outputs`` depend on, in plan order:
    a net cut before a layer (SSD's DetectionOutput) exports without it."""
    wanted, steps = set(outputs), []
    for step in reversed(plan):
        if step.is_input or wanted & set(step.tops):
            steps.append(step)
            wanted.update(step.bottoms)
    return steps[::-1]


def build_graph(net, proto, precision="fp32", dynamic_batch=False, outputs=None):
    """Write the ONNX graph of ``net`` into the GraphProto ``proto``: Input tops become graph
    inputs, the exporter of each layer the outputs depend on runs in plan order (in-place
    layers simply rebind their blob's name), outputs are renamed to the Caffe output blobs
    (``outputs``, default ``net.output_names``; a blob written in place is exposed with its
    final value)."""
    g = Graph(proto, precision, dynamic_batch, reserved=net.blob_shapes)
    outputs = outputs or net.output_names
    values = {}
    for step in _needed(net.plan, outputs):
        layer = net.layers[step.key]
        if step.is_input:
            values.update((t, g.input(t, net.blob_shapes[t])) for t in step.tops)
            continue
        outs = _export_layer(g, layer, [values[b] for b in step.bottoms],
                             [net.blob_shapes[b] for b in step.bottoms])
        values.update(zip(step.tops, outs))
    for name in outputs:
        if name not in values:
            raise CaffeError(f"cannot expose blob '{name}' as an output: the net has no such blob")
        g.output(values[name], name, net.blob_shapes[name])
    g.finish(net.param.name or "protocaffe")


def to_onnx(net, *, opset=DEFAULT_OPSET, dynamic_batch=False, precision="fp32", outputs=None, checked=True):
    """An ONNX ModelProto of ``net`` (a CaffeNet or a pycaffe-style Net), shape-inferred and checked.

    ``precision`` "fp16" stores weights and computes in float16 (inputs and outputs too);
    ``dynamic_batch`` makes axis 0 of inputs and outputs symbolic; ``outputs`` names the
    blobs to expose (default: the net's outputs), e.g. every blob, to compare layer by layer,
    or the blobs before a layer to leave out (layers they do not depend on are not exported).
    ``checked=False`` leaves out onnx's shape inference and checker, for a model handed
    straight to onnxruntime, which checks it itself (VGG-16: 0.8 s to export instead of 11.7).
    """
    _check_options(opset, precision)
    net = _caffe_net(net)
    model = onnx.ModelProto(producer_name="protocaffe")
    model.opset_import.add(domain="", version=opset)
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    build_graph(net, model.graph, precision, dynamic_batch, outputs)
    if checked:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(net, path, **options):
    """Write ``net`` as an ONNX file at ``path``; the options are :func:`to_onnx`'s. Returns the model."""
    model = to_onnx(net, **options)
    try:
        onnx.save(model, os.fspath(path))
    except OSError as e:
        raise CaffeError(f"{os.fspath(path)}: cannot write the ONNX model: {e.strerror}") from None
    return model
