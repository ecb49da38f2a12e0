"""pycaffe's ``caffe.draw``: a NetParameter as a Graphviz picture, through pydot.

Layers are boxes labelled with name, (type) and, for convolution and pooling,
kernel size, stride and pad; blobs are grey octagons; an in-place layer (one
bottom that is also its top) is a green box. Colours follow pycaffe: convolution
red, pooling orange, inner product purple, others blue. Edges out of Data,
Convolution and InnerProduct layers carry the batch size or num_output.
Rendering needs Graphviz's ``dot`` program.
"""
import pydot

from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
            "InnerProduct": "#CC33FF"}
_LEARNING = ("Convolution", "Deconvolution", "InnerProduct")


def choose_color_by_layertype(layertype):
    return _COLOURS.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def get_edge_label(layer):
    """Batch size out of Data, num_output out of Convolution/Deconvolution/InnerProduct, else empty."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """(weight, bias) lr_mult of a learning layer; 1.0 where no ParamSpec says otherwise."""
    if layer.type not in _LEARNING:
        raise CaffeError(f"layer '{layer.name}': {layer.type} layers have no learning rate multiplier")
    if len(layer.param) > 2:
        raise CaffeError(f"layer '{layer.name}': expected at most 2 param specs, found {len(layer.param)}")
    mults = [p.lr_mult for p in layer.param] + [1.0] * (2 - len(layer.param))
    return tuple(mults)


def _spatial(layer):
    if layer.type == "Pooling":
        p = layer.pooling_param
        return p.kernel_size, p.stride, p.pad
    p = layer.convolution_param
    first = (lambda field, default: field[0] if len(field) else default)
    return first(p.kernel_size, 1), first(p.stride, 1), first(p.pad, 0)


def get_layer_label(layer, rankdir, display_lrm=False):
    """The quoted node label: name, (type), spatial parameters, lr mults; words split by
    spaces for a vertical layout (TB/BT) and by newlines otherwise."""
    sep = " " if rankdir in ("TB", "BT") else r"\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        pool = caffe_pb2.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)
        parts.append(f"({layer.type} {pool})")
    else:
        parts.append(f"({layer.type})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        kernel, stride, pad = _spatial(layer)
        parts.append(sep.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in _LEARNING:
        w, b = get_layer_lr_mult(layer)
        if w or b:
            parts.append(f"lr mult: {w:.1f}, {b:.1f}")
    return '"%s"' % sep.join(parts)


def _in_phase(layer, phase):
    """pycaffe's rule: kept when no include rule or one matches the phase, and no exclude rule does."""
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise CaffeError(f"layer '{layer.name}' has both include and exclude rules")
    kept = not len(layer.include) or any(r.phase == phase for r in layer.include)
    return kept and not any(r.phase == phase for r in layer.exclude)


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """A pydot graph of the net's layers (of ``phase`` only, when given) and blobs."""
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes, edges = {}, []
    for layer in caffe_net.layer:
        if not _in_phase(layer, phase):
            continue
        node = f"{layer.name}_{layer.type}"
        label = get_layer_label(layer, rankdir, display_lrm)
        in_place = len(layer.bottom) == 1 and list(layer.bottom) == list(layer.top)
        style = NEURON_LAYER_STYLE if in_place else dict(LAYER_STYLE_DEFAULT,
                                                         fillcolor=choose_color_by_layertype(layer.type))
        nodes[node] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", node, '""'))
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(top)
            edges.append((node, top + "_blob", get_edge_label(layer) if label_edges else '""'))
    for n in nodes.values():
        graph.add_node(n)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The picture as bytes in format ``ext`` (png, svg, pdf, ..., or raw for the dot text)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext == "raw":
        return graph.to_string().encode()
    try:
        return graph.create(format=ext)
    except FileNotFoundError:
        raise CaffeError("drawing needs Graphviz's `dot` program, which is not on PATH; "
                         "install the system package graphviz (e.g. apt-get install graphviz)") from None


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Write the picture to ``filename`` in the format its extension names ('.raw': dot text)."""
    data = draw_net(caffe_net, rankdir, filename[filename.rfind(".") + 1:], phase, display_lrm)
    with open(filename, "wb") as f:
        f.write(data)
