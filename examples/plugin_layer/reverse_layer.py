"""A layer plugin for protocaffe: the Reverse layer of some Caffe forks, which reverses the order
of its input along one axis (``reverse_param { axis: 1 }``). Importing this module adds the
parameter to protocaffe's schema and the layer type to its registry."""
from pathlib import Path

from protocaffe import plugins
from protocaffe.layer_types import Layer
from protocaffe.layer_types.base import canonical_axis

plugins.load_proto(Path(__file__).with_name("reverse.proto"))


@plugins.register_layer
class Reverse(Layer):
    """x (any shape) -> the same shape, reversed along ``reverse_param.axis``; the gradient is
    reversed back (autograd)."""
    type = "Reverse"

    def setup(self, bottom_shapes):
        self.axis = canonical_axis(self.layer_param("reverse_param").axis, len(bottom_shapes[0]), self)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        return x.flip(self.axis)
