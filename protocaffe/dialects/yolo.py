"""The Caffe ports of YOLOv2: Reorg (eric612/MobileNet-YOLO, gklz1982/caffe-yolov2) and Region
(openvinotoolkit/training_toolbox_caffe).

Fields: ``proto/forks/yolo.proto``. The forks number ``reorg_param`` 149 (eric612) and 147
(gklz1982, BVLC's swish_param), ``region_param`` 214; in binary files they move to
protocaffe's numbers inside Reorg and Region layers (every file). Layer types:
protocaffe.layer_types.yolo.
"""
from protocaffe.dialects import Dialect, register, wire
from protocaffe.proto.forks import yolo_pb2  # noqa: F401 (registers the forks' fields)

YOLO = register(Dialect(
    key="yolo",
    name="YOLOv2 Caffe ports (Reorg, Region)",
    proto_files=("forks/yolo.proto",),
    layer_types=frozenset({"Reorg", "Region"}),
    moves={("caffe.LayerParameter", "Reorg"): {(147, wire.LENGTH): 230001, (149, wire.LENGTH): 230001},
           ("caffe.LayerParameter", "Region"): {(214, wire.LENGTH): 230002}},
))
