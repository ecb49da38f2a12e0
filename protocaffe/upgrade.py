"""Format upgrades, applied on load in Caffe's order, each a small needs/upgrade pair.

    V0 (``layers { layer { type: "conv" } }``, padding layers)  -> V1
    data-layer transform fields (scale, mean_file, crop_size, mirror) -> transform_param
    V1 (``layers { type: CONVOLUTION blobs_lr: 1 }``)            -> current ``layer``
    net-level ``input`` / ``input_dim`` / ``input_shape``         -> an ``Input`` layer
    BatchNorm's old lr_mult-0 param specs                        -> removed
    solver ``solver_type`` enum                                  -> ``type`` string

Each upgrade works on a copy and logs a line, as Caffe does.
"""
import logging

from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2

log = logging.getLogger("protocaffe")
V1 = caffe_pb2.V1LayerParameter

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

# V0 type strings -> V1 enum values
V0_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS, "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT, "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS, "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN, "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING,
    "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX, "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT, "tanh": V1.TANH, "window_data": V1.WINDOW_DATA,
}

# sub-messages that a V1 layer and a current layer both have, under the same field name
_SHARED_PARAMS = [f.name for f in V1.DESCRIPTOR.fields
                  if f.name.endswith("_param") and f.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name]


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


# ---- V0 -> V1 ----------------------------------------------------------------

def net_needs_v0_upgrade(net):
    return any(l.HasField("layer") for l in net.layers)


def _v0_to_v1(v0, source):
    """One V0 layer's fields moved to the V1 layer and its typed sub-message."""
    out = V1()
    out.name = v0.name
    if v0.type not in V0_TYPES:
        raise CaffeError(f"{source}: layer '{v0.name}': unknown V0 layer type '{v0.type}'")
    out.type = V0_TYPES[v0.type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    t = v0.type
    if t in ("conv", "innerproduct"):
        p = out.convolution_param if t == "conv" else out.inner_product_param
        for f in ("num_output", "weight_filler", "bias_filler"):
            if v0.HasField(f):
                getattr(p, f).CopyFrom(getattr(v0, f)) if f.endswith("filler") else setattr(p, f, getattr(v0, f))
        if v0.HasField("biasterm"):
            p.bias_term = v0.biasterm
        if t == "conv":
            if v0.HasField("kernelsize"):
                p.kernel_size.append(v0.kernelsize)
            if v0.HasField("pad"):
                p.pad.append(v0.pad)
            if v0.HasField("stride"):
                p.stride.append(v0.stride)
            if v0.HasField("group"):
                p.group = v0.group
    elif t == "pool":
        p = out.pooling_param
        for f, g in (("kernelsize", "kernel_size"), ("stride", "stride"), ("pad", "pad"), ("pool", "pool")):
            if v0.HasField(f):
                setattr(p, g, getattr(v0, f))
    elif t == "lrn":
        for f in ("local_size", "alpha", "beta", "k"):
            if v0.HasField(f):
                setattr(out.lrn_param, f, getattr(v0, f))
    elif t == "dropout" and v0.HasField("dropout_ratio"):
        out.dropout_param.dropout_ratio = v0.dropout_ratio
    elif t in ("data", "images"):
        p = out.data_param if t == "data" else out.image_data_param
        for f, g in (("source", "source"), ("batchsize", "batch_size"), ("rand_skip", "rand_skip")):
            if v0.HasField(f):
                setattr(p, g, getattr(v0, f))
        if t == "images":
            for f, g in (("shuffle_images", "shuffle"), ("new_height", "new_height"), ("new_width", "new_width")):
                if v0.HasField(f):
                    setattr(p, g, getattr(v0, f))
        for f, g in (("scale", "scale"), ("meanfile", "mean_file"), ("cropsize", "crop_size"), ("mirror", "mirror")):
            if v0.HasField(f):
                setattr(out.transform_param, g, getattr(v0, f))
    elif t == "concat" and v0.HasField("concat_dim"):
        out.concat_param.concat_dim = v0.concat_dim
    elif t == "hdf5_output" and v0.HasField("hdf5_output_param"):
        out.hdf5_output_param.CopyFrom(v0.hdf5_output_param)
    return out


def upgrade_v0_net(net, source):
    """V0 -> V1, folding each ``padding`` layer into the conv or pool layer that reads it."""
    out = _copy(net)
    del out.layers[:]
    pads = {}  # padded blob name -> (original blob name, pad)
    for old in net.layers:
        v0 = old.layer
        if v0.type == "padding":
            pads[old.top[0]] = (old.bottom[0], v0.pad)
            continue
        layer = _v0_to_v1(v0, source)
        layer.top.extend(old.top)
        for b in old.bottom:
            if b in pads:
                original, pad = pads[b]
                if v0.type == "conv":
                    layer.convolution_param.pad[:] = [pad]
                elif v0.type == "pool":
                    layer.pooling_param.pad = pad
                else:
                    raise CaffeError(f"{source}: layer '{v0.name}': a padding layer may only feed "
                                     f"a conv or pool layer, not '{v0.type}'")
                b = original
            layer.bottom.append(b)
        out.layers.append(layer)
    log.info("Upgraded V0 net %s to V1", source)
    return out


# ---- data transformation fields -> transform_param ---------------------------

_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _data_params(layer):
    return [getattr(layer, f) for f in ("data_param", "image_data_param", "window_data_param")
            if layer.HasField(f)]


def net_needs_data_upgrade(net):
    return any(p.HasField(f) for l in list(net.layers) + list(net.layer)
               for p in _data_params(l) for f in _TRANSFORM_FIELDS)


def upgrade_net_data_transformation(net, source):
    out = _copy(net)
    for layer in list(out.layers) + list(out.layer):
        for p in _data_params(layer):
            for f in _TRANSFORM_FIELDS:
                if p.HasField(f):
                    setattr(layer.transform_param, f, getattr(p, f))
                    p.ClearField(f)
    log.info("Upgraded data transformation parameters of %s to transform_param", source)
    return out


# ---- V1 -> current -----------------------------------------------------------

def net_needs_v1_upgrade(net):
    return len(net.layers) > 0


def _v1_to_layer(v1, source):
    layer = caffe_pb2.LayerParameter()
    layer.name = v1.name
    if v1.type not in V1_TYPES:
        raise CaffeError(f"{source}: layer '{v1.name}': unknown V1 layer type {v1.type}")
    layer.type = V1_TYPES[v1.type]
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.blobs.extend(v1.blobs)
    layer.loss_weight.extend(v1.loss_weight)
    n_specs = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n_specs):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for f in _SHARED_PARAMS + ["transform_param", "loss_param"]:
        if v1.HasField(f):
            getattr(layer, f).CopyFrom(getattr(v1, f))
    if v1.HasField("layer"):
        raise CaffeError(f"{source}: layer '{v1.name}' still holds a V0 layer after the V0 upgrade")
    return layer


def upgrade_v1_net(net, source):
    if len(net.layer):
        raise CaffeError(f"{source}: mixes V1 'layers' and current 'layer' fields; use one format")
    out = _copy(net)
    del out.layers[:]
    out.layer.extend(_v1_to_layer(l, source) for l in net.layers)
    log.info("Upgraded V1 net %s to the current layer format", source)
    return out


# ---- net inputs -> Input layer -------------------------------------------------

def net_needs_input_upgrade(net):
    return len(net.input) > 0


def upgrade_net_input(net, source):
    """``input`` with ``input_shape`` (one per input, or one for all) or ``input_dim`` (4 per input)
    becomes one ``Input`` layer at the front, named "input" as Caffe names it. A legacy
    .caffemodel lists inputs without shapes: there the fields are simply dropped."""
    out = _copy(net)
    n = len(net.input)
    if not len(net.input_shape) and not len(net.input_dim):
        del out.input[:]
        return out
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    if len(net.input_shape):
        if len(net.input_shape) not in (1, n):
            raise CaffeError(f"{source}: {n} inputs need 1 or {n} input_shape, found {len(net.input_shape)}")
        layer.input_param.shape.extend(net.input_shape)
    else:
        if len(net.input_dim) != 4 * n:
            raise CaffeError(f"{source}: {n} inputs need {4 * n} input_dim values, found {len(net.input_dim)}")
        for i in range(n):
            layer.input_param.shape.add().dim.extend(net.input_dim[4 * i:4 * i + 4])
    del out.input[:]
    del out.input_shape[:]
    del out.input_dim[:]
    del out.layer[:]
    out.layer.append(layer)
    out.layer.extend(net.layer)
    log.info("Upgraded net inputs of %s to an Input layer", source)
    return out


# ---- BatchNorm param specs -------------------------------------------------------

def net_needs_batchnorm_upgrade(net):
    return any(l.type == "BatchNorm" and len(l.param) == 3 for l in net.layer)


def upgrade_net_batchnorm(net, source):
    """Old nets froze BatchNorm's three statistics with lr_mult 0 specs; Caffe now does it itself."""
    out = _copy(net)
    for layer in out.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            del layer.param[:]
    log.info("Removed the old BatchNorm param specs of %s", source)
    return out


NET_UPGRADES = [
    (net_needs_v0_upgrade, upgrade_v0_net),
    (net_needs_data_upgrade, upgrade_net_data_transformation),
    (net_needs_v1_upgrade, upgrade_v1_net),
    (net_needs_input_upgrade, upgrade_net_input),
    (net_needs_batchnorm_upgrade, upgrade_net_batchnorm),
]


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
    if solver.HasField("type"):
        raise CaffeError(f"{source}: both the old solver_type field and the new type field are set; "
                         f"keep only type: \"{solver.type}\"")
    out = _copy(solver)
    out.type = SOLVER_TYPES[solver.solver_type]
    out.ClearField("solver_type")
    log.info("Upgraded solver_type of %s to type: \"%s\"", source, out.type)
    return out


def upgrade_solver(param, source="<solver>"):
    if solver_needs_type_upgrade(param):
        param = upgrade_solver_type(param, source)
    return param
