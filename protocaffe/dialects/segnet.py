"""SegNet and ENet: alexgkendall/caffe-segnet, TimoSaemann/caffe-segnet-cudnn5 and caffe-enet.

Fields: ``proto/forks/segnet.proto``: ``upsample_param`` (max-unpooling with the pooling
mask; one message with the YOLO ports' nearest-neighbour Upsample), ``bn_param`` (one
message with PSPNet's BN), ``dense_image_data_param`` and LossParameter's
``weight_by_label_freqs`` / ``class_weighting``. Layer types: protocaffe.layer_types.
segmentation (Upsample, BN), protocaffe.data.dense (DenseImageData), and the class weights
in protocaffe.layer_types.loss's SoftmaxWithLoss.

Collisions, and how a binary file of these forks reads:
- ``upsample_param``: caffe-segnet's 137 (BVLC's embed_param) and cudnn5/enet's 147 (BVLC's
  swish_param) move to 149 in Upsample layers, in every binary file (BVLC has no Upsample);
- ``dense_image_data_param``: caffe-segnet's 138 (BVLC's tile_param) moves to 46 (cudnn5/enet's)
  in DenseImageData layers, in every binary file;
- LossParameter 3 is ``weight_by_label_freqs`` here and BVLC's ``normalization`` (an enum,
  also a varint): with ``--dialect segnet`` only, 3 moves to 130003 and 5 (where caffe-enet
  and cudnn5 put ``normalization``) to 3. Prototxt names the fields and needs none of this.
The forks' ``BN`` with no bn_param at all cannot say whose BN it is: in a file recognised as
SegNet's, :func:`convert` sets ``bn_mode: LEARN`` (SegNet's default) on it.
"""
from protocaffe import schema
from protocaffe.dialects import Dialect, layers_of, register, wire
from protocaffe.proto.forks import segnet_pb2  # noqa: F401 (registers the fork's fields)


def convert(param, source):
    """A BN layer without bn_param fields is SegNet's BN in LEARN mode."""
    for layer in layers_of(param):
        if layer.type == "BN" and not schema.get(layer, "bn_param").ListFields():
            schema.get(layer, "bn_param").bn_mode = segnet_pb2.BNParameter.LEARN
    return param


SEGNET = register(Dialect(
    key="segnet",
    name="SegNet/ENet (caffe-segnet, caffe-segnet-cudnn5, caffe-enet)",
    fields=frozenset({"bn_mode", "shift_filler", "upsample_h", "upsample_w", "scale_h", "scale_w",
                      "pad_out_h", "pad_out_w", "weight_by_label_freqs", "class_weighting",
                      "dense_image_data_param"}),
    layer_types=frozenset({"DenseImageData"}),
    moves={
        ("caffe.LayerParameter", "Upsample"): {(137, wire.LENGTH): 149, (147, wire.LENGTH): 149},
        ("caffe.LayerParameter", "DenseImageData"): {(138, wire.LENGTH): 46},
        "caffe.LossParameter": {(3, wire.VARINT): 130003, (5, wire.VARINT): 3},
    },
    convert=convert,
))
