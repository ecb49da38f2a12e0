"""``protocaffe draw_net NET.prototxt OUT.png``: pycaffe's python/draw_net.py, same flags."""
import argparse

from protocaffe import draw, fileio
from protocaffe.proto import caffe_pb2

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}


def run(argv):
    p = argparse.ArgumentParser(prog="protocaffe draw_net", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input_net_proto_file", help="Input network prototxt file")
    p.add_argument("output_image_file", help="Output image file (format from the extension)")
    p.add_argument("--rankdir", default="LR",
                   help="TB (top-bottom, vertical), LR (left-right, horizontal), or another dot option")
    p.add_argument("--phase", default="ALL", choices=sorted(PHASES),
                   help="Which network phase to draw: TRAIN, TEST, or ALL (every layer)")
    p.add_argument("--display_lrm", action="store_true",
                   help="Show the non-zero learning rate multipliers of learning layers")
    args = p.parse_args(argv)
    net = fileio.read_text(args.input_net_proto_file, caffe_pb2.NetParameter)
    print(f"Drawing net to {args.output_image_file}")
    draw.draw_net_to_file(net, args.output_image_file, args.rankdir, PHASES[args.phase], args.display_lrm)
    return 0
