"""SphereFace (wy1iu/sphereface, tools/caffe-sphereface): the angular-margin inner product.

Fields: ``proto/forks/sphereface.proto``. The fork numbers ``margin_inner_product_param``
147 (BVLC's swish_param); in binary files it moves to protocaffe's number inside
MarginInnerProduct layers (every file). Layer type: protocaffe.layer_types.face.
"""
from protocaffe.dialects import Dialect, register, wire
from protocaffe.proto.forks import sphereface_pb2  # noqa: F401 (registers the fork's fields)

SPHEREFACE = register(Dialect(
    key="sphereface",
    name="SphereFace (wy1iu/sphereface)",
    proto_files=("forks/sphereface.proto",),
    layer_types=frozenset({"MarginInnerProduct"}),
    moves={("caffe.LayerParameter", "MarginInnerProduct"): {(147, wire.LENGTH): 240001}},
))
