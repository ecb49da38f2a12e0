"""The MobileNet forks: ReLU6 (chuanqi305/ssd, RuiminChen/Caffe-MobileNetV2-ReLU6) and depthwise
convolution (``ConvolutionDepthwise`` of farmingyard/caffe-mobilenet, from BVLC pull request
#5665; ``DepthwiseConvolution`` of yonghenglh6/DepthwiseConvolution).

Fields: ``relu6_param`` (``proto/forks/mobilenet.proto``), one message holding chuanqi305's
``engine`` and RuiminChen's ``negative_slope``, at chuanqi305's 208; RuiminChen's 100000
and eric612/MobileNet-YOLO's 211 move there in ReLU6 layers of every binary file. The
depthwise types read BVLC's convolution_param. Layer types: protocaffe.layer_types.mobile.
"""
from protocaffe.dialects import Dialect, register, wire
from protocaffe.proto.forks import mobilenet_pb2  # noqa: F401 (registers the forks' fields)

MOBILENET = register(Dialect(
    key="mobilenet",
    name="MobileNet forks (chuanqi305, RuiminChen, farmingyard, yonghenglh6)",
    proto_files=("forks/mobilenet.proto",),
    layer_types=frozenset({"ReLU6", "ConvolutionDepthwise", "DepthwiseConvolution"}),
    moves={("caffe.LayerParameter", "ReLU6"): {(100000, wire.LENGTH): 208, (211, wire.LENGTH): 208}},
))
