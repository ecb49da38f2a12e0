"""protocaffe: Caffe's prototxt nets, solvers and models, run on PyTorch."""
from protocaffe.proto import caffe_pb2  # noqa: F401

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
