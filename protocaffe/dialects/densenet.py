"""DenseNet-Caffe (shicai/DenseNet-Caffe): ``ceil_mode`` in pooling_param.

DenseNet's prototxts are BVLC's layers plus ``ceil_mode: false`` in ``pool1``, a field of
BVLC pull request #3057 (never merged; OpenCV's dnn reads it): a bool at PoolingParameter
13 [default true]. BVLC later put ``round_mode`` (CEIL = 0, FLOOR = 1) at 13, so the same
binary varint means the opposite: the fork's ``ceil_mode: false`` is BVLC's ``CEIL``.
Here ``ceil_mode`` sits at 120013 (``proto/forks/densenet.proto``); a binary file read with
``--dialect densenet`` has its 13 moved there, and :func:`convert` turns ``ceil_mode`` into
BVLC's ``round_mode`` (true: CEIL, false: FLOOR) so the rest of protocaffe sees BVLC's field
only. The output-size arithmetic of the two is the same (PR #3057's pooling_layer.cpp).
"""
from protocaffe import schema
from protocaffe.dialects import Dialect, layers_of, register, wire
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2
from protocaffe.proto.forks import densenet_pb2  # noqa: F401 (registers the fork's fields)


def convert(param, source):
    """Every pooling_param's ``ceil_mode`` as BVLC's ``round_mode``; both set is an error."""
    for layer in layers_of(param):
        pooling = layer.pooling_param
        if not schema.has(pooling, "ceil_mode"):
            continue
        ceil = schema.get(pooling, "ceil_mode")
        if pooling.HasField("round_mode"):
            raise CaffeError(f"{source}: layer '{layer.name}': pooling_param sets both ceil_mode: "
                             f"{str(ceil).lower()} (DenseNet-Caffe) and round_mode: "
                             f"{caffe_pb2.PoolingParameter.RoundMode.Name(pooling.round_mode)} (BVLC); give one")
        pooling.round_mode = caffe_pb2.PoolingParameter.CEIL if ceil else caffe_pb2.PoolingParameter.FLOOR
        pooling.ClearExtension(densenet_pb2.ceil_mode)
    return param


DENSENET = register(Dialect(
    key="densenet",
    name="DenseNet-Caffe",
    proto_files=("forks/densenet.proto",),
    moves={"caffe.PoolingParameter": {(13, wire.VARINT): 120013}},
    convert=convert,
))
