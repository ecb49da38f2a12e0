"""Caffe's layer types, one class each, registered under the exact prototxt ``type``.

Importing this package imports every family module. The data layer types live with the
data pipeline (protocaffe.data) and register when protocaffe.net imports them, so nothing
here imports data. (pycaffe's ``caffe.layers`` is net_spec's layer factory, not this package.)
"""
from protocaffe.layer_types.base import LAYERS, BuildContext, Layer, layer_class, register  # noqa: F401
from protocaffe.layer_types import input, vision, neuron, common, normalization, loss  # noqa: F401,E402
from protocaffe.layer_types import recurrent, python, spp, indexing, im2col  # noqa: F401,E402
from protocaffe.layer_types import segmentation, mobile, detection, multibox, roi, ohem, yolo, face  # noqa: F401,E402
