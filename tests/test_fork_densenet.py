"""DenseNet-Caffe's ``ceil_mode`` (BVLC PR #3057): read from text and from the fork's binary
encoding, converted to BVLC's ``round_mode``, named in the log; a DenseNet-121-shaped net with
``ceil_mode: false`` and ``true`` computes what OpenCV 4's dnn computes from the fork's text."""
import numpy as np
import pytest

from fork_nets import bn_scale_relu, conv, input_layer, layer, max_relative, run_both
from protocaffe import dialects, schema
from protocaffe.dialects.wire import VARINT, _encode_varint
from protocaffe.errors import CaffeError
from protocaffe.net import read_net_param
from protocaffe.proto import caffe_pb2

CEIL, FLOOR = caffe_pb2.PoolingParameter.CEIL, caffe_pb2.PoolingParameter.FLOOR


def _pool_net(tmp_path, extra):
    path = tmp_path / "pool.prototxt"
    path.write_text(input_layer("data", (1, 1, 112, 112)) +
                    layer("pool1", "Pooling", ["data"],
                          body=f"pooling_param {{ pool: MAX kernel_size: 3 stride: 2 pad: 1 {extra} }}"))
    return path


@pytest.mark.parametrize("ceil, mode", [("false", FLOOR), ("true", CEIL)])
def test_ceil_mode_in_text_becomes_round_mode_and_is_named_in_the_log(tmp_path, logged, ceil, mode):
    path = _pool_net(tmp_path, f"ceil_mode: {ceil}")
    param = read_net_param(path)
    pooling = param.layer[1].pooling_param
    assert pooling.HasField("round_mode") and pooling.round_mode == mode
    assert not schema.has(pooling, "ceil_mode")
    assert f"Reading {path} as DenseNet-Caffe (ceil_mode)" in [r.getMessage() for r in logged.records]


def test_a_bvlc_file_is_not_densenet(tmp_path, logged):
    param = read_net_param(_pool_net(tmp_path, "round_mode: FLOOR"))
    assert param.layer[1].pooling_param.round_mode == FLOOR
    assert not any("DenseNet" in r.getMessage() for r in logged.records)


def test_ceil_mode_and_round_mode_together_is_one_line(tmp_path):
    path = _pool_net(tmp_path, "ceil_mode: false round_mode: CEIL")
    with pytest.raises(CaffeError, match=r"pool.prototxt: layer 'pool1': pooling_param sets both ceil_mode: "
                                         r"false \(DenseNet-Caffe\) and round_mode: CEIL \(BVLC\); give one$"):
        read_net_param(path)


def _fork_binary(value):
    """A NetParameter as the fork writes it: one Pooling layer whose pooling_param holds
    kernel_size 3, stride 2 and ceil_mode (field 13, a bool varint) = ``value``."""
    pooling = caffe_pb2.PoolingParameter(kernel_size=3, stride=2).SerializeToString()
    pooling += _encode_varint(13 << 3 | VARINT) + bytes([value])
    head = caffe_pb2.LayerParameter(name="pool1", type="Pooling", bottom=["data"], top=["pool1"])
    body = head.SerializeToString() + _encode_varint(121 << 3 | 2) + _encode_varint(len(pooling)) + pooling
    return _encode_varint(100 << 3 | 2) + _encode_varint(len(body)) + body


@pytest.mark.parametrize("value, fork_mode, bvlc_mode", [(0, FLOOR, CEIL), (1, CEIL, FLOOR)])
def test_binary_ceil_mode_reads_with_the_dialect_and_inverted_without(tmp_path, value, fork_mode, bvlc_mode):
    """The fork's ceil_mode: false is the byte 0 at 13, which BVLC reads as round_mode CEIL."""
    path = tmp_path / "densenet.caffemodel"
    path.write_bytes(_fork_binary(value))
    fork = dialects.read_binary(path, caffe_pb2.NetParameter, dialect="densenet")
    assert fork.layer[0].pooling_param.round_mode == fork_mode
    assert not schema.has(fork.layer[0].pooling_param, "ceil_mode")
    bvlc = dialects.read_binary(path, caffe_pb2.NetParameter)
    assert bvlc.layer[0].pooling_param.round_mode == bvlc_mode


def densenet121(ceil_mode, growth=4, blocks=(6, 12, 24, 16)):
    """DenseNet-121's topology as DenseNet-Caffe writes it (shicai/DenseNet-Caffe), narrower: a 224 x 224
    input, conv 7x7/2 + BatchNorm/Scale/ReLU, MAX 3x3/2 pad 1 pooling with ``ceil_mode``, dense
    blocks of 6/12/24/16 bottleneck layers (BN-ReLU-conv 1x1 to 4 growth, BN-ReLU-conv 3x3 to
    growth, Concat), transitions (BN-ReLU-conv 1x1 halving the channels, AVE 2x2/2), BN-ReLU,
    global AVE pooling and a 1x1 classifier."""
    text = input_layer("data", (1, 3, 224, 224)) + conv("conv1", "data", 2 * growth, 7, 2, 3, bias=False)
    text += bn_scale_relu("conv1", "conv1")
    text += layer("pool1", "Pooling", ["conv1"], body="pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 "
                                                      f"ceil_mode: {str(ceil_mode).lower()} }}")
    x, channels = "pool1", 2 * growth
    for b, n in enumerate(blocks, 2):
        for i in range(1, n + 1):
            name = f"conv{b}_{i}"
            text += bn_scale_relu(f"{name}/x1", x, f"{name}/x1/bn")
            text += conv(f"{name}/x1", f"{name}/x1/bn", 4 * growth, 1, bias=False)
            text += bn_scale_relu(f"{name}/x2", f"{name}/x1")
            text += conv(f"{name}/x2", f"{name}/x1", growth, 3, pad=1, bias=False)
            text += layer(f"concat_{b}_{i}", "Concat", [x, f"{name}/x2"])
            x, channels = f"concat_{b}_{i}", channels + growth
        if b < len(blocks) + 1:
            text += bn_scale_relu(f"conv{b}_blk", x, f"conv{b}_blk/bn")
            channels //= 2
            text += conv(f"conv{b}_blk", f"conv{b}_blk/bn", channels, 1, bias=False)
            text += layer(f"pool{b}", "Pooling", [f"conv{b}_blk"],
                          body="pooling_param { pool: AVE kernel_size: 2 stride: 2 }")
            x = f"pool{b}"
    text += bn_scale_relu("conv5_blk", x)
    text += layer("pool5", "Pooling", [x], body="pooling_param { pool: AVE global_pooling: true }")
    return text + conv("fc6", "pool5", 10, 1)


@pytest.mark.parametrize("ceil_mode, sizes", [(False, (56, 28, 14, 7)), (True, (57, 29, 15, 8))])
def test_densenet121_computes_opencvs_output(tmp_path, ceil_mode, sizes):
    """pool1 (112 -> 56 floor, 57 ceil) changes every later size, and the transitions' AVE
    pooling then clips a last window (57 -> 29: its divisor counts one column)."""
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    outputs = ["pool1", "pool2", "pool3", "pool4", "fc6"]
    ours, theirs = run_both(tmp_path, densenet121(ceil_mode), {"data": x}, outputs)
    assert [o.shape[2] for o in ours[:4]] == list(sizes)
    for name, a, b in zip(outputs, ours, theirs):
        assert a.shape == b.shape, name
        assert max_relative(a, b) < 1e-4, (name, max_relative(a, b))
    assert np.abs(theirs[-1]).max() > 0.1  # the random net's output is not all near 0


def test_upgrade_net_proto_binary_with_the_dialect_writes_bvlcs_round_mode(tmp_path):
    from protocaffe import fileio
    from protocaffe.cli import main
    source, out = tmp_path / "densenet.caffemodel", tmp_path / "bvlc.caffemodel"
    source.write_bytes(_fork_binary(0))
    assert main(["upgrade_net_proto_binary", "--dialect", "densenet", str(source), str(out)]) == 0
    assert fileio.read_binary(out, caffe_pb2.NetParameter).layer[0].pooling_param.round_mode == FLOOR
    assert main(["upgrade_net_proto_binary", str(source), str(out)]) == 0
    assert fileio.read_binary(out, caffe_pb2.NetParameter).layer[0].pooling_param.round_mode == CEIL
