"""Caffe's layer types, one class each, registered under the exact prototxt ``type``.

Importing this package imports every family module so the registry is full. (pycaffe's
``caffe.layers`` is net_spec's layer factory, not this package.)
"""
from protocaffe.layer_types.base import LAYERS, BuildContext, Layer, layer_class, register  # noqa: F401
from protocaffe.layer_types import input, vision, neuron, common, normalization, loss  # noqa: F401,E402
from protocaffe.layer_types import spp, indexing, im2col  # noqa: F401,E402
from protocaffe.data import layers as _data_layers  # noqa: F401,E402
from protocaffe.data import hdf5 as _hdf5_layers, window as _window_layers  # noqa: F401,E402
