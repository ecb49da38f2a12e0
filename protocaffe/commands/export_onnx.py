"""``protocaffe export_onnx --model deploy.prototxt [--weights W] --output net.onnx [--opset N]
[--dynamic_batch] [--precision fp32|fp16] [--outputs a,b]``: the TEST-phase net as an ONNX model.

Inputs are named after the net's input blobs, outputs after its output blobs (or the blobs
``--outputs`` names: the layers they do not depend on are left out); the weights are
embedded; the file is shape-inferred and passes onnx.checker. Needs the onnx extra
(``pip install -e '.[onnx]'``).
"""
import protocaffe
from protocaffe import log as logs
from protocaffe.commands.common import stages
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2


def run(argv):
    f = Flags("export_onnx", __doc__.splitlines()[0])
    f.flag("model", "", "the deploy net (prototxt) to export")
    f.flag("weights", "", "the trained weights (.caffemodel), comma-separated for several")
    f.flag("output", "", "the ONNX file to write")
    f.flag("opset", 17, "the ONNX opset to target (13 or later)")
    f.flag("dynamic_batch", False, "make axis 0 of the inputs and outputs a symbolic batch size")
    f.flag("precision", "fp32", "fp32, or fp16 for float16 weights and arithmetic")
    f.flag("outputs", "", "blobs to expose instead of the net's outputs, comma-separated (a cut: "
           "the layers they do not depend on are left out)")
    f.flag("level", 0, "network level")
    f.flag("stage", "", "network stages, comma-separated")
    args = f.parse(argv)
    logs.setup()
    if not args.model or not args.output:
        raise CaffeError("need a net and a file to write: --model <prototxt> --output <file.onnx>")
    net = build_net(args.model, caffe_pb2.TEST, level=args.level, stages=stages(args),
                    weights=args.weights or None)
    if not args.weights:
        log.warning("no --weights given: the ONNX file holds the prototxt's filler values")
    model = protocaffe.export_onnx(net, args.output, opset=args.opset,
                                   dynamic_batch=args.dynamic_batch, precision=args.precision,
                                   outputs=[b for b in args.outputs.split(",") if b] or None)
    log.info("Wrote %s: opset %d, inputs %s, outputs %s", args.output, args.opset,
             ", ".join(i.name for i in model.graph.input), ", ".join(o.name for o in model.graph.output))
    return 0
