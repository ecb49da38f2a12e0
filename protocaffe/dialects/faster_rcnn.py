"""Faster R-CNN (Ross Girshick's fork, github.com/rbgirshick/caffe-fast-rcnn, the Caffe of
py-faster-rcnn): ROI pooling and box regression.

Fields: ``proto/forks/faster_rcnn.proto`` (LayerParameter 8266711 ``roi_pooling_param`` and
8266712 ``smooth_l1_loss_param``, DropoutParameter 2 ``scale_train``), at the fork's own
numbers, which collide with nothing of BVLC's: its text and binary files read as they are.
Layer types: ROIPooling (protocaffe.layer_types.roi) and SmoothL1Loss with ``sigma`` and
inside/outside weights; its region proposals and training targets are pycaffe Python layers
(py-faster-rcnn's lib/rpn, lib/roi_data_layer), run by protocaffe.layer_types.python. R-FCN's
Caffe shares these fields (protocaffe.dialects.rfcn).
"""
from protocaffe.dialects import Dialect, register
from protocaffe.proto.forks import faster_rcnn_pb2  # noqa: F401 (registers the fork's fields)

FASTER_RCNN = register(Dialect(
    key="faster_rcnn",
    name="Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    proto_files=("forks/faster_rcnn.proto",),
    layer_types=frozenset({"ROIPooling"}),
))
