"""Format upgrades, applied on load in Caffe's order, each a small needs/upgrade pair.

    V0 (``layers { layer { type: "conv" } }``, padding layers)      -> V1
    V1 data layers' scale/mean_file/crop_size/mirror                -> transform_param
    V1 (``layers { type: CONVOLUTION blobs_lr: 1 }``)                -> current ``layer``
    net-level ``input`` with ``input_dim`` / ``input_shape``          -> an ``Input`` layer
    BatchNorm's three old param specs                               -> lr_mult and decay_mult 0
    solver ``solver_type`` enum                                     -> ``type`` string

Each upgrade returns a new message and logs a line, as Caffe does. Where Caffe
stops (an unknown type, a padding layer feeding anything but conv or pool) or
logs a problem and drops a field (a V0 field the layer type has no use for),
protocaffe raises a CaffeError that names the file and the layer.
"""
import logging

from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2

log = logging.getLogger("protocaffe")
V1 = caffe_pb2.V1LayerParameter

# every V1 enum type -> the current type string
V1_TYPES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax", V1.BNLL: "BNLL",
    V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss", V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data", V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss", V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data", V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss",
    V1.IM2COL: "Im2col", V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", V1.MVN: "MVN", V1.POOLING: "Pooling",
    V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split", V1.SLICE: "Slice",
    V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData", V1.THRESHOLD: "Threshold",
}

# every V0 type string -> its V1 enum type ("padding" layers are folded away first)
V0_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS, "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT, "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS, "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN, "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING,
    "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX, "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT, "tanh": V1.TANH, "window_data": V1.WINDOW_DATA,
}

_CONV, _IP, _POOL = "convolution_param", "inner_product_param", "pooling_param"
_DATA, _IMAGES, _WINDOW = "data_param", "image_data_param", "window_data_param"

# V0 field -> {V0 type: where it goes in the V1 layer}; "*" takes it from any type.
# V0 fields not listed here (new_num, new_channels) are dropped, as Caffe drops them.
V0_FIELDS = {
    "num_output": {"conv": f"{_CONV}.num_output", "innerproduct": f"{_IP}.num_output"},
    "biasterm": {"conv": f"{_CONV}.bias_term", "innerproduct": f"{_IP}.bias_term"},
    "weight_filler": {"conv": f"{_CONV}.weight_filler", "innerproduct": f"{_IP}.weight_filler"},
    "bias_filler": {"conv": f"{_CONV}.bias_filler", "innerproduct": f"{_IP}.bias_filler"},
    "pad": {"conv": f"{_CONV}.pad", "pool": f"{_POOL}.pad"},
    "kernelsize": {"conv": f"{_CONV}.kernel_size", "pool": f"{_POOL}.kernel_size"},
    "group": {"conv": f"{_CONV}.group"},
    "stride": {"conv": f"{_CONV}.stride", "pool": f"{_POOL}.stride"},
    "pool": {"pool": f"{_POOL}.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"},
    "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"},
    "k": {"lrn": "lrn_param.k"},
    "source": {"data": f"{_DATA}.source", "hdf5_data": "hdf5_data_param.source",
               "images": f"{_IMAGES}.source", "window_data": f"{_WINDOW}.source",
               "infogain_loss": "infogain_loss_param.source"},
    "scale": {"*": "transform_param.scale"},
    "meanfile": {"*": "transform_param.mean_file"},
    "batchsize": {"data": f"{_DATA}.batch_size", "hdf5_data": "hdf5_data_param.batch_size",
                  "images": f"{_IMAGES}.batch_size", "window_data": f"{_WINDOW}.batch_size"},
    "cropsize": {"*": "transform_param.crop_size"},
    "mirror": {"*": "transform_param.mirror"},
    "rand_skip": {"data": f"{_DATA}.rand_skip", "images": f"{_IMAGES}.rand_skip"},
    "shuffle_images": {"images": f"{_IMAGES}.shuffle"},
    "new_height": {"images": f"{_IMAGES}.new_height"},
    "new_width": {"images": f"{_IMAGES}.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": f"{_WINDOW}.fg_threshold"},
    "det_bg_threshold": {"window_data": f"{_WINDOW}.bg_threshold"},
    "det_fg_fraction": {"window_data": f"{_WINDOW}.fg_fraction"},
    "det_context_pad": {"window_data": f"{_WINDOW}.context_pad"},
    "det_crop_mode": {"window_data": f"{_WINDOW}.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}

# V1 data layer types -> the sub-message whose old transform fields move to transform_param
V1_DATA_PARAMS = {V1.DATA: _DATA, V1.IMAGE_DATA: _IMAGES, V1.WINDOW_DATA: _WINDOW}
TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# the typed sub-messages a V1 layer carries; the current LayerParameter has each under the same name
V1_SUB_PARAMS = [f.name for f in V1.DESCRIPTOR.fields if f.message_type and f.name.endswith("_param")]


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _layer_error(source, name, message):
    return CaffeError(f"{source}: layer '{name}': {message}")


def _refuse_mixed_formats(net, source):
    if len(net.layer) and len(net.layers):
        raise CaffeError(f"{source}: the net has both 'layers' (V0/V1 format) and 'layer' (current format) "
                         f"entries; write every layer as 'layer {{ type: \"...\" }}' and upgrade again")


def _assign(layer, path, value):
    """Put ``value`` at ``path`` ("sub_param.field") in ``layer``: copy, append or set by field kind."""
    *parents, name = path.split(".")
    target = layer
    for part in parents:
        target = getattr(target, part)
    field = target.DESCRIPTOR.fields_by_name[name]
    if field.message_type:
        getattr(target, name).CopyFrom(value)
    elif field.is_repeated:
        getattr(target, name).append(value)
    else:
        setattr(target, name, value)


# ---- V0 -> V1 ----------------------------------------------------------------

def net_needs_v0_upgrade(net):
    return any(l.HasField("layer") for l in net.layers)


def _padding_source(net, producer, layer, source):
    """Check that a padding layer may be folded into ``layer``; returns the padding layer's input blob."""
    pad_layer = net.layers[producer]
    v0 = layer.layer
    if v0.type not in ("conv", "pool"):
        raise _layer_error(source, v0.name, f"a padding layer ('{pad_layer.layer.name}') can only feed a "
                                            f"conv or pool layer, found type '{v0.type}'")
    if len(layer.bottom) != 1:
        raise _layer_error(source, v0.name, f"a layer fed by a padding layer takes 1 bottom, "
                                            f"found {len(layer.bottom)}")
    if len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
        raise _layer_error(source, pad_layer.layer.name, f"a padding layer takes 1 bottom and 1 top, found "
                                                         f"{len(pad_layer.bottom)} and {len(pad_layer.top)}")
    return pad_layer.bottom[0]


def fold_v0_padding(net, source):
    """V0 ``padding`` layers removed, their ``pad`` set on the conv or pool layer reading their top."""
    out = _copy(net)
    del out.layers[:]
    producer = {name: None for name in net.input}  # blob -> index of the last layer writing it
    for i, layer in enumerate(net.layers):
        kept = None if layer.layer.type == "padding" else out.layers.add()
        if kept is not None:
            kept.CopyFrom(layer)
        for j, bottom in enumerate(layer.bottom):
            if bottom not in producer:
                raise _layer_error(source, layer.layer.name, f"bottom '{bottom}' is not a net input "
                                                             f"nor the top of an earlier layer")
            k = producer[bottom]
            if k is not None and net.layers[k].layer.type == "padding":
                kept.bottom[j] = _padding_source(net, k, layer, source)
                kept.layer.pad = net.layers[k].layer.pad
        for top in layer.top:
            producer[top] = i
    return out


def _v0_layer_to_v1(old, source):
    """One V0 ``layers { layer { ... } }`` entry as a V1 layer."""
    v0 = old.layer
    if v0.type not in V0_TYPES:
        raise _layer_error(source, v0.name, f"unknown V0 layer type '{v0.type}'; "
                                            f"known: {', '.join(sorted(V0_TYPES))}")
    out = V1(type=V0_TYPES[v0.type], bottom=old.bottom, top=old.top, blobs=v0.blobs,
             blobs_lr=v0.blobs_lr, weight_decay=v0.weight_decay)
    if v0.HasField("name"):
        out.name = v0.name
    for field, targets in V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        path = targets.get(v0.type, targets.get("*"))
        if path is None:
            raise _layer_error(source, v0.name, f"V0 field '{field}' has no meaning for a '{v0.type}' layer "
                                                f"(it is read by: {', '.join(targets)})")
        _assign(out, path, getattr(v0, field))
    return out


def upgrade_v0_net(net, source):
    """V0 -> V1: padding layers folded in, then every layer converted.

    Like Caffe, the new net keeps only the name, inputs and force_backward of the old one.
    """
    _refuse_mixed_formats(net, source)
    for i, old in enumerate(net.layers):
        if not old.HasField("layer"):
            raise CaffeError(f"{source}: layers entry {i} (name '{old.name}') has no V0 'layer {{ }}' block "
                             f"while others have one; write the whole net in one format")
    folded = fold_v0_padding(net, source)
    out = caffe_pb2.NetParameter(input=net.input, input_dim=net.input_dim)
    for field in ("name", "force_backward"):
        if net.HasField(field):
            setattr(out, field, getattr(net, field))
    out.layers.extend(_v0_layer_to_v1(l, source) for l in folded.layers)
    log.info("Upgraded %s from the V0 layer format to V1", source)
    return out


# ---- V1 data layers' transform fields -> transform_param -----------------------

def _old_data_param(layer):
    """A V1 data layer's own sub-message (data_param, ...), where old transform fields may sit."""
    name = V1_DATA_PARAMS.get(layer.type)
    return getattr(layer, name) if name else None


def _old_transform_fields(layer):
    params = _old_data_param(layer)
    return [] if params is None else [f for f in TRANSFORM_FIELDS if params.HasField(f)]


def net_needs_data_upgrade(net):
    return any(_old_transform_fields(l) for l in net.layers)


def upgrade_net_data_transformation(net, source):
    out = _copy(net)
    for layer in out.layers:
        for field in _old_transform_fields(layer):
            params = _old_data_param(layer)
            setattr(layer.transform_param, field, getattr(params, field))
            params.ClearField(field)
    log.info("Upgraded %s: data layer transformation fields moved to transform_param", source)
    return out


# ---- V1 -> current -----------------------------------------------------------

def net_needs_v1_upgrade(net):
    return len(net.layers) > 0


def _v1_param_specs(v1, layer):
    """V1's parallel lists (param names, blob_share_mode, blobs_lr, weight_decay) as ParamSpecs."""
    lists = (("name", v1.param), ("share_mode", v1.blob_share_mode),
             ("lr_mult", v1.blobs_lr), ("decay_mult", v1.weight_decay))
    for _ in range(max(len(values) for _, values in lists)):
        layer.param.add()
    for field, values in lists:
        for spec, value in zip(layer.param, values):
            if field == "share_mode":
                value = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(value))
            setattr(spec, field, value)


def _v1_layer_to_current(v1, source):
    if v1.type not in V1_TYPES:
        raise _layer_error(source, v1.name, f"unknown V1 layer type number {v1.type}")
    layer = caffe_pb2.LayerParameter(bottom=v1.bottom, top=v1.top, include=v1.include,
                                     exclude=v1.exclude, blobs=v1.blobs, loss_weight=v1.loss_weight)
    if v1.HasField("name"):
        layer.name = v1.name
    if v1.HasField("type"):
        layer.type = V1_TYPES[v1.type]
    _v1_param_specs(v1, layer)
    for field in V1_SUB_PARAMS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))
    return layer


def upgrade_v1_net(net, source):
    """V1 -> current: enum types to type strings, blobs_lr/weight_decay to param specs, blobs kept."""
    _refuse_mixed_formats(net, source)
    out = _copy(net)
    del out.layers[:]
    out.layer.extend(_v1_layer_to_current(l, source) for l in net.layers)
    log.info("Upgraded %s from the V1 layer format to the current one", source)
    return out


# ---- net inputs -> Input layer -------------------------------------------------

def net_needs_input_upgrade(net):
    return len(net.input) > 0


def _input_shapes(net, source):
    """One BlobShape per input, from ``input_shape`` (preferred) or four ``input_dim`` each."""
    n = len(net.input)
    if len(net.input_shape):
        if len(net.input_shape) != n:
            raise CaffeError(f"{source}: {n} inputs need {n} input_shape, found {len(net.input_shape)}")
        return list(net.input_shape)
    if len(net.input_dim) != 4 * n:
        raise CaffeError(f"{source}: {n} inputs need {4 * n} input_dim values, found {len(net.input_dim)}")
    return [caffe_pb2.BlobShape(dim=net.input_dim[4 * i:4 * i + 4]) for i in range(n)]


def upgrade_net_input(net, source):
    """Net-level inputs become one ``Input`` layer, named "input" as Caffe names it, at the front.

    Inputs without any shape (an old .caffemodel lists them so) are simply dropped.
    """
    out = _copy(net)
    for field in ("input", "input_shape", "input_dim"):
        out.ClearField(field)
    if not len(net.input_shape) and not len(net.input_dim):
        log.info("Upgraded %s: dropped net inputs %s, which have no shapes", source, list(net.input))
        return out
    layer = caffe_pb2.LayerParameter(name="input", type="Input", top=net.input)
    layer.input_param.shape.extend(_input_shapes(net, source))
    del out.layer[:]
    out.layer.append(layer)
    out.layer.extend(net.layer)
    log.info("Upgraded %s: net inputs %s became an Input layer", source, list(net.input))
    return out


# ---- BatchNorm param specs -------------------------------------------------------

def _old_batchnorm(layer):
    return layer.type == "BatchNorm" and len(layer.param) == 3


def net_needs_batchnorm_upgrade(net):
    return any(_old_batchnorm(l) for l in net.layer)


def upgrade_net_batchnorm(net, source):
    """Old BatchNorm definitions declared three param specs; Caffe keeps them (names and share
    modes too) but forces lr_mult and decay_mult to 0, as the statistics are not learned."""
    out = _copy(net)
    for layer in out.layer:
        if _old_batchnorm(layer):
            for spec in layer.param:
                spec.lr_mult = 0
                spec.decay_mult = 0
    log.info("Upgraded %s: old BatchNorm param specs set to lr_mult 0, decay_mult 0", source)
    return out


NET_UPGRADES = [
    (net_needs_v0_upgrade, upgrade_v0_net),
    (net_needs_data_upgrade, upgrade_net_data_transformation),
    (net_needs_v1_upgrade, upgrade_v1_net),
    (net_needs_input_upgrade, upgrade_net_input),
    (net_needs_batchnorm_upgrade, upgrade_net_batchnorm),
]


def net_needs_upgrade(param):
    return any(needs(param) for needs, _ in NET_UPGRADES)


def upgrade_net(param, source="<net>"):
    """Apply every upgrade the net needs, in order; returns the current-format NetParameter."""
    for needs, upgrade in NET_UPGRADES:
        if needs(param):
            param = upgrade(param, source)
    return param


# ---- solver ------------------------------------------------------------------------

SOLVER_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad", caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta", caffe_pb2.SolverParameter.ADAM: "Adam",
}


def solver_needs_type_upgrade(solver):
    return solver.HasField("solver_type")


def upgrade_solver_type(solver, source):
    """``solver_type: ADAM`` -> ``type: "Adam"``. Like Caffe, refuses a file that sets both fields."""
    if solver.HasField("type"):
        old = caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)
        raise CaffeError(f"{source}: both the old solver_type ({old}) and the new type (\"{solver.type}\") "
                         f"are set; keep only type")
    out = _copy(solver)
    out.type = SOLVER_TYPES[solver.solver_type]
    out.ClearField("solver_type")
    log.info("Upgraded %s: solver_type %s became type: \"%s\"", source,
             caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type), out.type)
    return out


def upgrade_solver(param, source="<solver>"):
    """Apply the solver upgrades it needs; returns the current-format SolverParameter."""
    if solver_needs_type_upgrade(param):
        param = upgrade_solver_type(param, source)
    return param
