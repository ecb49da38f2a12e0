"""The base class every Caffe layer type derives from, and the type registry.

A layer is a ``torch.nn.Module`` built from its ``LayerParameter`` and the
shapes of its bottoms. Construction follows Caffe's fixed order:

1. check the number of bottoms and tops against the class's declared counts;
2. ``setup(bottom_shapes)``: read the layer's typed sub-message (e.g.
   ``self.param.pooling_param``; defaults come only from caffe.proto) and
   create parameters with :meth:`add_blob` (PyTorch names inside: ``weight``,
   ``bias``; their order in ``blob_names`` is Caffe's ``blobs`` order);
3. ``top_shapes(bottom_shapes)``: pure shape inference, no tensors;
4. the net assigns loss weights (``*Loss`` types weigh their first top 1).

``forward(*bottoms)`` takes and returns tensors: one tensor for one top, a
tuple for several. Gradients come from autograd.
"""
from dataclasses import dataclass, field

import torch
from torch import nn

from protocaffe import schema
from protocaffe.errors import CaffeError, did_you_mean
from protocaffe.proto import caffe_pb2

LAYERS = {}
"""Caffe ``type`` string -> Layer class."""


def register(cls):
    """Class decorator: register ``cls`` under its Caffe type string ``cls.type``."""
    if cls.type in LAYERS:
        raise ValueError(f"layer type {cls.type!r} registered twice")
    LAYERS[cls.type] = cls
    return cls


def layer_class(layer_param):
    """The Layer class for a LayerParameter, or a CaffeError naming the layer and the known types."""
    cls = LAYERS.get(layer_param.type)
    if cls is None:
        known = ", ".join(sorted(LAYERS))
        raise CaffeError(
            f"layer '{layer_param.name}' has type '{layer_param.type}', which protocaffe does not "
            f"support{did_you_mean(layer_param.type, LAYERS)}; supported types: {known}. "
            f"A plugin can add it (see protocaffe.plugins)")
    return cls


@dataclass
class BuildContext:
    """What a layer may need while it is built, besides its own parameters.

    ``phase`` is caffe_pb2.TRAIN or TEST; ``generator`` seeds every filler and
    random layer of the net from one seed; ``device`` is where tensors go.
    """
    phase: int = caffe_pb2.TEST
    generator: torch.Generator = field(default_factory=torch.Generator)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _device_generators: dict = field(default_factory=dict)
    #: Caffe's global random stream (protocaffe.caffe_random.Stream) under a random seed, as
    #: Caffe::set_random_seed starts it; fillers, data layers and CPU Dropout draw from it as
    #: Caffe's layers do. None when unseeded; ``.lost`` once a layer drew what is not replayed
    caffe_stream: object = None
    #: the memory the net being built may still take (protocaffe.memory.Budget); None: unchecked
    memory: object = None

    def caffes(self):
        """Caffe's stream when its values are still Caffe's, else None."""
        stream = self.caffe_stream
        return None if stream is None or stream.lost else stream

    def generator_on(self, device):
        """The generator for draws made on ``device``: ``generator`` itself on the CPU; elsewhere
        one generator per device, seeded once from ``generator`` (None on ``meta``)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.generator
        if device.type == "meta":
            return None
        if device not in self._device_generators:
            seed = int(torch.randint(0, 2**62, (), generator=self.generator))
            self._device_generators[device] = torch.Generator(device).manual_seed(seed)
        return self._device_generators[device]


class Layer(nn.Module):
    """One Caffe layer. Subclasses set ``type`` and the bottom/top counts they accept."""

    type = None
    #: whether building this layer takes from Caffe's random stream only what protocaffe
    #: replays (its fillers, through add_blob); False where Caffe draws otherwise
    replays_caffe_draws = True
    #: number of bottoms accepted: an int, or (min, max) with max None for no limit
    num_bottoms = 1
    #: number of tops produced: an int, or (min, max)
    num_tops = 1
    #: names of this layer's parameter tensors, in Caffe's ``blobs`` order
    blob_names = ()
    #: a loss layer: its first top gets loss_weight 1 unless the prototxt says otherwise
    is_loss = False
    #: the tops' first axis depends on the data (Filter): top_shapes gives an upper bound
    batch_from_data = False
    #: the tops' sizes depend on the data (DetectionOutput's rows): top_shapes gives the
    #: placeholder shape Caffe's Reshape gives before any data, with the same number of axes
    shape_from_data = False

    def __init__(self, param, bottom_shapes, ctx=None):
        super().__init__()
        self.param = param
        self.name = param.name
        self.ctx = ctx if ctx is not None else BuildContext()
        self.phase = self.ctx.phase
        self._check_count("bottom", len(param.bottom), self.num_bottoms)
        self._check_count("top", len(param.top), self.num_tops)
        self.setup([tuple(s) for s in bottom_shapes])

    # -- the parts a subclass writes ------------------------------------------

    def setup(self, bottom_shapes):
        """Read parameters and create blobs. Default: nothing to set up."""

    def top_shapes(self, bottom_shapes):
        """The shape of each top, from the shapes of the bottoms (Caffe's Reshape)."""
        raise NotImplementedError

    def forward(self, *bottoms):
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------

    def layer_param(self, name):
        """This layer's typed sub-message ``name`` (``"pooling_param"``, or a fork's or plugin's
        extension such as ``"prior_box_param"``), with caffe.proto's defaults where unset."""
        return schema.get(self.param, name)

    def error(self, message):
        """A CaffeError naming this layer and its type."""
        return CaffeError(f"layer '{self.name}' (type {self.type}): {message}")

    def _check_count(self, what, found, expected):
        lo, hi = (expected, expected) if isinstance(expected, int) else expected
        if found < lo or (hi is not None and found > hi):
            want = str(lo) if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise self.error(f"expects {want} {what}(s), found {found}")

    def add_blob(self, name, shape, filler=None, *, trainable=True):
        """Create parameter ``name`` of ``shape``, filled by a FillerParameter (default: constant 0).

        Non-trainable blobs (BatchNorm statistics) are registered as buffers;
        both kinds are saved in .caffemodel files in ``blob_names`` order.
        """
        from protocaffe.fillers import fill
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise self.error(f"parameter {name} would have shape {shape}: a dimension is negative")
        if self.ctx.memory is not None:
            self.ctx.memory.claim(self, f"parameter {name} ({'x'.join(map(str, shape))})", count(shape))
        tensor = torch.empty(shape, dtype=torch.float32)
        fill(tensor, filler if filler is not None else caffe_pb2.FillerParameter(),
             self.ctx.generator, self.ctx.caffes())
        if trainable:
            setattr(self, name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor)
        if name not in self.blob_names:
            self.blob_names = tuple(self.blob_names) + (name,)

    @property
    def blobs(self):
        """This layer's parameter tensors in Caffe's order (``net.params[name]``)."""
        return [getattr(self, n) for n in self.blob_names]

    def extra_repr(self):
        return f"name={self.name!r}, type={self.type!r}"


def canonical_axis(axis, num_axes, layer=None):
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end; out of range is an error."""
    if not -num_axes <= axis < num_axes:
        msg = f"axis {axis} out of range for a {num_axes}-axis blob"
        raise layer.error(msg) if layer is not None else CaffeError(msg)
    return axis % num_axes


def count(shape, start=0, end=None):
    """The product of ``shape[start:end]`` (Caffe's Blob::count)."""
    n = 1
    for d in shape[start:end]:
        n *= int(d)
    return n


def legacy_shape(shape):
    """Caffe's 4-d (num, channels, height, width) of a blob of at most 4 axes: missing axes are 1."""
    return tuple(shape) + (1,) * (4 - len(shape))
