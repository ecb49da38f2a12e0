"""Layers that start a net from given shapes: Input, DummyData, Parameter."""
import torch

from protocaffe.fillers import fill
from protocaffe.layer_types.base import Layer, register
from protocaffe.proto import caffe_pb2


def _shapes_for_tops(layer, shapes):
    """Caffe's rule for per-top shapes: one shape for all tops, or one per top."""
    n = len(layer.param.top)
    if len(shapes) not in (1, n):
        raise layer.error(f"needs 1 or {n} shapes (one per top), found {len(shapes)}")
    return [tuple(shapes[0] if len(shapes) == 1 else shapes[i]) for i in range(n)]


@register
class Input(Layer):
    """Net inputs fed by the caller. Tops: the shapes in ``input_param.shape``.

    The net passes the caller's tensors straight through; ``forward()`` alone
    gives zeros of the declared shapes, like a fresh Caffe blob.
    """
    type = "Input"
    num_bottoms = 0
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        self.shapes = _shapes_for_tops(self, shapes)

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    def forward(self):
        tops = tuple(torch.zeros(s, device=self.ctx.device) for s in self.shapes)
        return tops if len(tops) > 1 else tops[0]


@register
class DummyData(Layer):
    """Tops filled by ``data_filler`` (one for all tops, or one per top; constant 0 if none).

    Shapes come from ``shape`` or the legacy num/channels/height/width lists.
    As in Caffe, non-constant fillers are drawn anew at every forward.
    """
    type = "DummyData"
    num_bottoms = 0
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        p = self.param.dummy_data_param
        if len(p.shape):
            shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
        else:
            shapes = [tuple(int(v[i]) for v in (p.num, p.channels, p.height, p.width))
                      for i in range(len(p.num))]
        self.shapes = _shapes_for_tops(self, shapes)
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter()]
        if len(fillers) not in (1, len(self.shapes)):
            raise self.error(f"needs 0, 1 or {len(self.shapes)} data_filler, found {len(fillers)}")
        self.fillers = [fillers[0] if len(fillers) == 1 else fillers[i] for i in range(len(self.shapes))]
        # Caffe redraws non-constant fillers at every forward, from its stream: not replayed
        self.replays_caffe_draws = all(f.type == "constant" for f in self.fillers)

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    def forward(self):
        device = self.ctx.device
        tops = tuple(fill(torch.empty(s, device=device), f, self.ctx.generator_on(device))
                     for s, f in zip(self.shapes, self.fillers))
        return tops if len(tops) > 1 else tops[0]


@register
class Parameter(Layer):
    """One learnable blob of ``parameter_param.shape`` exposed as the top."""
    type = "Parameter"
    num_bottoms = 0

    def setup(self, bottom_shapes):
        self.shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        self.add_blob("weight", self.shape)

    def top_shapes(self, bottom_shapes):
        return [self.shape]

    def forward(self):
        return self.weight
