"""R-FCN (daijifeng001/caffe-rfcn, and Microsoft/caffe @1a2be8ec, the Caffe of py-R-FCN):
position-sensitive ROI pooling and online hard example mining.

Fields: ``proto/forks/rfcn.proto``; ROIPooling and SmoothL1Loss come from Faster R-CNN's
(protocaffe.dialects.faster_rcnn). Collisions, and how they are read:

- ``psroi_pooling_param`` is 10001 (caffe-rfcn), 149 (Microsoft) and 10002 (OpenCV);
  Microsoft numbers ``roi_pooling_param`` 147 and ``smooth_l1_loss_param`` 148 (BVLC's
  swish_param and clip_param) and ``box_annotator_ohem_param`` 150. In binary files these
  move to protocaffe's numbers inside the layer types that carry them (every file).
- LossParameter: the forks' NormalizationMode has PRE_FIXED = 3 and NONE = 4 where BVLC has
  NONE = 3, and ``pre_fixed_normalizer`` is 4. Text files name the values and read right.
  A binary file's field 3 can only be read as the forks' inside their own OHEM types, or
  in every layer with ``--dialect rfcn``: it moves to ``rfcn_normalization``, which
  ``convert`` turns into BVLC's ``normalization`` (PRE_FIXED a value of protocaffe's own).
"""
from protocaffe.dialects import Dialect, layers_of, register, wire
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2
from protocaffe.proto.forks import faster_rcnn_pb2, rfcn_pb2  # noqa: F401 (registers the forks' fields)

L = wire.LENGTH
LOSS = {(3, wire.VARINT): 220003, (4, wire.FIXED32): 220004}
"""LossParameter's normalization and pre_fixed_normalizer, from the forks' numbers to protocaffe's."""
MODES = {rfcn_pb2.RFCN_FULL: "FULL", rfcn_pb2.RFCN_VALID: "VALID", rfcn_pb2.RFCN_BATCH_SIZE: "BATCH_SIZE",
         rfcn_pb2.RFCN_PRE_FIXED: "PRE_FIXED", rfcn_pb2.RFCN_NONE: "NONE"}


def _layer(type_, rules):
    return ("caffe.LayerParameter", type_), rules


def convert(param, source):
    """The forks' normalization values (read from a binary file) as BVLC's enum."""
    for layer in layers_of(param):
        loss = layer.loss_param
        if not loss.HasExtension(rfcn_pb2.rfcn_normalization):
            continue
        if loss.HasField("normalization"):
            raise CaffeError(f"{source}: layer '{layer.name}' sets loss_param.normalization twice "
                             f"(BVLC's and R-FCN's field)")
        mode = loss.Extensions[rfcn_pb2.rfcn_normalization]
        loss.normalization = caffe_pb2.LossParameter.NormalizationMode.Value(MODES[mode])
        loss.ClearExtension(rfcn_pb2.rfcn_normalization)
    return param


RFCN = register(Dialect(
    key="rfcn",
    name="R-FCN (daijifeng001/caffe-rfcn, Microsoft/caffe)",
    proto_files=("forks/rfcn.proto",),
    layer_types=frozenset({"PSROIPooling", "BoxAnnotatorOHEM", "SmoothL1LossOHEM", "SoftmaxWithLossOHEM"}),
    moves=dict([
        _layer("PSROIPooling", {(10001, L): 220001, (149, L): 220001, (10002, L): 220001}),
        _layer("BoxAnnotatorOHEM", {(150, L): 10000}),
        _layer("ROIPooling", {(147, L): 8266711}),
        _layer("SmoothL1Loss", {(148, L): 8266712}),
        _layer("SmoothL1LossOHEM", {(101, L): (101, LOSS)}),
        _layer("SoftmaxWithLossOHEM", {(101, L): (101, LOSS)}),
        ("caffe.LossParameter", LOSS),
    ]),
    convert=convert,
))
