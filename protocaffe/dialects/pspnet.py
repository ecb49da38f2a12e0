"""PSPNet (hszhao/PSPNet) and DeepLab v2 (deeplab-public-ver2): Interp, and PSPNet's BN.

Fields: ``interp_param`` (``proto/forks/pspnet.proto``) and PSPNet's fields of ``bn_param``
(one message with SegNet's, ``proto/forks/segnet.proto``). Layer types in
protocaffe.layer_types.segmentation. Both forks numbered interp_param 143, BVLC's
input_param: in Interp layers of every binary file it moves to 140143. PSPNet's bn_param
152 moves to 45 in BN layers, its fields 1-3 (slope_filler, bias_filler, momentum) to
140001-140003 where SegNet's fields 1-3 are. A BN with no bn_param fields, in a file
recognised as PSPNet's, gets ``frozen: false`` (PSPNet's default) to say whose it is.
DeepLab's other layers (SegAccuracy, DenseCRF, MatRead, ...) are not part of this dialect.
"""
from protocaffe import schema
from protocaffe.dialects import Dialect, layers_of, register, wire
from protocaffe.proto.forks import pspnet_pb2, segnet_pb2  # noqa: F401 (register the forks' fields)


def convert(param, source):
    """A BN layer without bn_param fields is PSPNet's BN, not frozen."""
    for layer in layers_of(param):
        if layer.type == "BN" and not schema.get(layer, "bn_param").ListFields():
            schema.get(layer, "bn_param").frozen = False
    return param


PSPNET = register(Dialect(
    key="pspnet",
    name="PSPNet/DeepLab v2 (hszhao/PSPNet, deeplab-public-ver2)",
    proto_files=("forks/pspnet.proto",),
    fields=frozenset({"slope_filler", "frozen"}),
    layer_types=frozenset({"Interp"}),
    moves={
        ("caffe.LayerParameter", "Interp"): {(143, wire.LENGTH): 140143},
        ("caffe.LayerParameter", "BN"): {(152, wire.LENGTH): (45, {(1, wire.LENGTH): 140001,
                                                                   (2, wire.LENGTH): 140002,
                                                                   (3, wire.FIXED32): 140003})},
    },
    convert=convert,
))
