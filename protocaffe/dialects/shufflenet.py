"""ShuffleNet (farmingyard/ShuffleNet; camel007/Caffe-ShuffleNet): the ShuffleChannel layer.

Field: ``shuffle_channel_param`` at the fork's 164 (``proto/forks/shufflenet.proto``), free in
BVLC, so files read unchanged. ShuffleNet's prototxts also use ``ConvolutionDepthwise`` (the
mobilenet dialect). Layer type: protocaffe.layer_types.mobile.
"""
from protocaffe.dialects import Dialect, register
from protocaffe.proto.forks import shufflenet_pb2  # noqa: F401 (registers the fork's fields)

SHUFFLENET = register(Dialect(
    key="shufflenet",
    name="ShuffleNet (farmingyard/ShuffleNet)",
    proto_files=("forks/shufflenet.proto",),
    layer_types=frozenset({"ShuffleChannel"}),
))
