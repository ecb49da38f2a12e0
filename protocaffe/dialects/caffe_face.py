"""caffe-face (ydwen/caffe-face): the center loss for face features.

Fields: ``proto/forks/caffe_face.proto``. The fork numbers ``center_loss_param`` 147 (BVLC's
swish_param); in binary files it moves to protocaffe's number inside CenterLoss layers
(every file). Layer type: protocaffe.layer_types.face.
"""
from protocaffe.dialects import Dialect, register, wire
from protocaffe.proto.forks import caffe_face_pb2  # noqa: F401 (registers the fork's fields)

CAFFE_FACE = register(Dialect(
    key="caffe_face",
    name="caffe-face center loss (ydwen/caffe-face)",
    proto_files=("forks/caffe_face.proto",),
    layer_types=frozenset({"CenterLoss"}),
    moves={("caffe.LayerParameter", "CenterLoss"): {(147, wire.LENGTH): 250001}},
))
