"""SSD (Wei Liu's fork, github.com/weiliu89/caffe, branch ssd): detection by default boxes.

Fields: ``proto/forks/ssd.proto`` (LayerParameter 200-207, TransformationParameter 8-14,
SolverParameter 41-44, SolverState 5-6, and the messages of boxes, annotations and label
maps). Collisions with BVLC: the fork numbered SolverParameter's ``eval_type`` 41 and
``ap_version`` 42, where BVLC later put ``layer_wise_reduce`` and ``weights``; in protocaffe
they sit at 110041 and 110042, and a binary SSD solver (``--dialect ssd``) is renumbered on
reading. Prototxt names the fields and needs nothing. Its layer types are registered in
protocaffe.layer_types.detection (PriorBox, ...) and protocaffe.data (AnnotatedData).
SmoothL1Loss, which Faster R-CNN also defines, does not mark a file as SSD.
"""
from protocaffe.dialects import Dialect, register, wire
from protocaffe.proto.forks import ssd_pb2  # noqa: F401 (registers the fork's fields)

SSD = register(Dialect(
    key="ssd",
    name="SSD (weiliu89/caffe)",
    proto_files=("forks/ssd.proto",),
    layer_types=frozenset({"PriorBox", "Permute", "Normalize", "DetectionOutput", "DetectionEvaluate",
                           "MultiBoxLoss", "AnnotatedData", "VideoData"}),
    moves={"caffe.SolverParameter": {(41, wire.LENGTH): 110041, (42, wire.LENGTH): 110042}},
))
