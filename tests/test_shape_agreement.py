"""Shape inference and forward agree: every blob a forward produces has the shape the net
inferred (``blob_shapes``) when it was built, for every golden layer case, both model-zoo
deploy nets, the golden slim nets and a GoogLeNet inception block."""
import numpy as np
import pytest
import torch

from conftest import GOLDEN
from protocaffe import net as netlib
from protocaffe.fileio import parse_text
from protocaffe.proto import caffe_pb2
from test_layers_golden import CASES

ROOT = GOLDEN.parents[2]
DEPLOY_NETS = sorted(ROOT.glob("models/*/deploy.prototxt")) + sorted(GOLDEN.glob("nets/slim_*.prototxt"))

INCEPTION = """
name: "inception_block"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8 dim: 7 dim: 7 } } }
layer { name: "1x1" type: "Convolution" bottom: "data" top: "1x1" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "3x3" type: "Convolution" bottom: "data" top: "3x3" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "5x5" type: "Convolution" bottom: "data" top: "5x5" convolution_param { num_output: 2 kernel_size: 5 pad: 2 } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "pool_proj" type: "Convolution" bottom: "pool" top: "pool_proj" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "output" type: "Concat" bottom: "1x1" bottom: "3x3" bottom: "5x5" bottom: "pool_proj" top: "output" }
layer { name: "ave" type: "Pooling" bottom: "output" top: "ave" pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }
"""


def _from_data(net, flag):
    """Blobs of layers with ``flag`` (batch_from_data: a Filter's tops; shape_from_data:
    DetectionOutput's rows) and what is made from them."""
    names = set()
    for step in net.plan:
        if getattr(net.layers[step.key], flag) or names.intersection(step.bottoms):
            names.update(step.tops)
    return names


def assert_shapes_agree(net, inputs):
    blobs, first = net.run(inputs, first={})
    batch, rows = _from_data(net, "batch_from_data"), _from_data(net, "shape_from_data")
    for produced in (first, blobs):
        for name, t in produced.items():
            inferred = net.blob_shapes[name]
            if name in rows:  # the inferred shape is Caffe's placeholder: the axes agree
                assert t.dim() == len(inferred), f"blob '{name}'"
            elif name in batch:  # the inferred first axis is an upper bound
                assert t.shape[1:] == inferred[1:] and t.shape[0] <= inferred[0], f"blob '{name}'"
            else:
                assert tuple(t.shape) == inferred, f"blob '{name}'"
    assert set(first) == set(net.blob_shapes)


@pytest.mark.parametrize("case", CASES)
def test_golden_case(case):
    folder = GOLDEN / case
    io_ = np.load(folder / "io.npz")
    phase = caffe_pb2.TRAIN if "train" in case else caffe_pb2.TEST
    net = netlib.build_net(str(folder / "net.prototxt"), phase, seed=1)
    with torch.no_grad():
        assert_shapes_agree(net, {k[3:]: torch.from_numpy(io_[k]) for k in io_.files if k.startswith("in_")})


def small(param):
    """The (upgraded) net with a batch of 1 in every Input blob and constant fillers (quick to
    build, the shapes unchanged)."""
    for layer in param.layer:
        for shape in layer.input_param.shape:
            shape.dim[0] = 1
        for _, sub in layer.ListFields():
            if hasattr(sub, "weight_filler"):
                sub.ClearField("weight_filler")
    return param


@pytest.mark.parametrize("path", DEPLOY_NETS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_deploy_net(path):
    net = netlib.build_net(small(netlib.read_net_param(path)), caffe_pb2.TEST, seed=1)
    inputs = {name: torch.rand(net.blob_shapes[name]) for name in net.input_names}
    with torch.no_grad():
        assert_shapes_agree(net, inputs)


def test_inception_block_keeps_its_size():
    net = netlib.build_net(parse_text(INCEPTION, caffe_pb2.NetParameter), caffe_pb2.TEST, seed=1)
    assert net.blob_shapes["pool"] == (1, 8, 7, 7)
    assert net.blob_shapes["output"] == (1, 12, 7, 7)
    with torch.no_grad():
        assert_shapes_agree(net, {"data": torch.rand(1, 8, 7, 7)})
