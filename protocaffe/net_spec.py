"""pycaffe's net_spec: write a net as Python calls, get its NetParameter.

    from protocaffe import layers as L, params as P, NetSpec
    n = NetSpec()
    n.data, n.label = L.Data(source="train_lmdb", backend=P.Data.LMDB, batch_size=64, ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    print(n.to_proto())

``L.<Type>(*bottoms, **params)`` makes a layer of that prototxt type. A keyword
goes into the layer's own ``<type>_param`` message when that message has the
field, otherwise onto LayerParameter itself (``param``, ``include``, ``loss_weight``,
``*_param`` dicts). Dicts fill sub-messages, lists fill repeated fields, and a
single value given to a repeated field becomes a one-item list. ``ntop=k`` gives
k tops (0 gives the layer itself), ``in_place=True`` writes the top over the
bottom. Tops assigned to a NetSpec are named after the attribute; others are
named ``<Type><count>``. Layers come out in the order that first reaches them,
bottoms before the layers that use them. A fork's fields go by their bare names, as in
the fork's own pycaffe (``L.PriorBox(n.conv, n.data, min_size=30.0)``,
``L.Normalize(n.conv4_3, norm_param=dict(across_spatial=False))``), and ``str()`` of the
result prints them so.
"""
from collections import Counter, OrderedDict

from google.protobuf import message_factory

from protocaffe import schema
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2


def _type_param(type_name):
    """The ``*_param`` field of a layer type, from the message names (ConvolutionParameter ->
    convolution_param; a fork's too: NormalizeParameter -> norm_param), or None."""
    descriptor = caffe_pb2.LayerParameter.DESCRIPTOR
    for name in schema.field_names(descriptor):
        field = schema.field(descriptor, name)
        if name.endswith("_param") and field.message_type is not None \
                and field.message_type.name == type_name + "Parameter":
            return name
    return None


def _has_field(msg, name):
    return schema.field(msg.DESCRIPTOR, name) is not None


def _assign(msg, name, value):
    """Set ``msg.name`` (a fork's field by its bare name too) from a Python value: dict ->
    sub-message, list -> repeated field."""
    field = schema.get(msg, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                _assign_dict(field.add(), item)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        _assign_dict(field, value)
    else:
        schema.assign(msg, name, value)


def _assign_dict(msg, values):
    for key, value in values.items():
        if not _has_field(msg, key):
            raise AttributeError(f"{msg.DESCRIPTOR.name} has no field '{key}'")
        _assign(msg, key, value)


class Top:
    """One output blob of a layer: the ``n``-th top of ``fn``."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer: its type, its bottoms (Tops) and its parameters."""

    def __init__(self, type_name, inputs, params):
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise CaffeError(f"{type_name}: bottom {i} must be a top of another layer, "
                                 f"found {type(inp).__name__}")
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _autoname(self, key, names, autonames):
        if key not in names:
            autonames[self.type_name] += 1
            names[key] = f"{self.type_name}{autonames[self.type_name]}"
        return names[key]

    def _layer_name(self, names, autonames):
        """The name of the first top, or ``<Type><count>`` for a layer without tops."""
        return self._autoname(self.tops[0] if self.tops else self, names, autonames)

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name, bottom=bottoms)
        if self.in_place:
            layer.top.extend(bottoms)
        else:
            layer.top.extend(self._autoname(t, names, autonames) for t in self.tops)
        layer.name = self._layer_name(names, autonames)
        for key, value in self.params.items():
            self._set_param(layer, key, value)
        layers[self] = layer

    def _set_param(self, layer, key, value):
        """A keyword goes to the type's own ``*_param`` when it has that field, else to the layer."""
        typed = _type_param(self.type_name)
        target = layer
        if not key.endswith("param") and typed and _has_field(schema.get(layer, typed), key):
            target = schema.get(layer, typed)
        if not _has_field(target, key):
            raise CaffeError(f"layer {layer.name} ({self.type_name}): no parameter '{key}' "
                             f"in {typed or 'its type'} or LayerParameter")
        try:
            _assign(target, key, value)
        except (AttributeError, TypeError, ValueError) as e:
            raise CaffeError(f"layer {layer.name} ({self.type_name}): cannot set {key}={value!r}: {e}") from None


def to_proto(*tops):
    """A NetParameter with every layer needed to compute ``tops``, intermediate blobs auto-named."""
    layers, names, autonames = OrderedDict(), {}, Counter()
    for top in tops:
        top._to_proto(layers, names, autonames)
    return caffe_pb2.NetParameter(layer=layers.values())


class NetSpec:
    """Named tops: ``n.conv1 = L.Convolution(...)`` names that top (and its layer) ``conv1``."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top '{name}'") from None

    __setitem__ = __setattr__

    def __getitem__(self, name):
        return self.tops[name]

    def to_proto(self):
        """A NetParameter of the layers behind every assigned top, in assignment order."""
        names = {top: name for name, top in self.tops.items()}
        layers, autonames = OrderedDict(), Counter()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        return caffe_pb2.NetParameter(layer=layers.values())


class Layers:
    """``L.<Type>(*bottoms, **params)``: one top, a tuple of ``ntop`` tops, or the layer for ntop=0."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        return layer


class Parameters:
    """``P.<Type>.<CONSTANT>``: an enum value of ``<Type>Parameter``, e.g. ``P.Pooling.MAX``;
    a fork's messages too (``P.PriorBox.CENTER_SIZE``)."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        try:
            descriptor = caffe_pb2.DESCRIPTOR.pool.FindMessageTypeByName(f"caffe.{type_name}Parameter")
        except KeyError:
            raise AttributeError(f"caffe.proto and the loaded forks have no message {type_name}Parameter") from None
        return _Constants(message_factory.GetMessageClass(descriptor))


class _Constants:
    def __init__(self, message):
        self._message = message

    def __getattr__(self, name):
        try:
            return getattr(self._message, name)
        except AttributeError:
            raise AttributeError(f"{self._message.DESCRIPTOR.name} has no constant {name}") from None


layers = Layers()
params = Parameters()
