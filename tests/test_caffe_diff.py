"""Edge cases checked against a real Caffe's output (tests/data/caffe_diff, found by tools/diff_caffe.py)."""
import re

import numpy as np
import pytest
import torch

from conftest import DATA
from protocaffe import TEST
from protocaffe.net import build_net

CASES = sorted(p.parent for p in (DATA / "caffe_diff").glob("*/net.prototxt"))


def caffes_answer(log):
    """The shape of the last top Caffe set up (``out``) and every value it logged for it."""
    shape = tuple(int(d) for d in re.findall(r"Top shape: ([\d ]+)\(", log)[-1].split())
    values = [float(v) for v in re.findall(r"Batch 0, out = (\S+)", log)]
    return shape, np.array(values)


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_layer_gives_caffes_output(case, monkeypatch):
    monkeypatch.chdir(case)  # the HDF5 list is read from the working directory, as Caffe reads it
    net = build_net("net.prototxt", TEST, weights="w.caffemodel")
    shape, values = caffes_answer((case / "caffe_test.log").read_text())
    out = net()["out"]
    assert tuple(out.shape) == shape == net.blob_shapes["out"]
    np.testing.assert_allclose(out.detach().double().ravel().numpy(), values, rtol=2e-5, atol=1e-5, equal_nan=True)


def test_the_cases_cover_what_diff_caffe_found():
    assert {p.name for p in CASES} >= {"conv_window_overhangs_by_less_than_a_stride",
                                       "pool_max_window_past_the_input", "flatten_end_axis_just_before_axis"}


def test_a_window_overhanging_the_input_reads_zeros_past_it_and_passes_gradients_back():
    from google.protobuf import text_format
    from protocaffe.proto import caffe_pb2
    param = text_format.Parse(
        'force_backward: true '  # no loss: backward only when forced, as in Caffe
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 7 dim: 1 } } }'
        'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 2 '
        'kernel_h: 4 kernel_w: 3 stride: 3 bias_term: false weight_filler { type: "gaussian" } } }',
        caffe_pb2.NetParameter())
    net = build_net(param, TEST, seed=1)
    x = torch.randn(1, 2, 7, 1, dtype=torch.float32, requires_grad=True)
    out = net(x=x)["c"]
    w = net.layers["c"].weight
    assert out.shape == (1, 2, 2, 1)  # H: (7 - 4) / 3 + 1 = 2; W: (1 - 3) / 3 truncates to 0, + 1
    w = w.detach()
    expected = torch.stack([(x[0, :, 3 * i:3 * i + 4, 0][None] * w[:, :, :, 0]).sum(dim=(1, 2)) for i in range(2)], -1)
    torch.testing.assert_close(out[0, :, :, 0], expected)  # only kernel column 0 meets the input
    out.sum().backward()
    grad = torch.zeros(2, 7)
    for i in range(2):
        grad[:, 3 * i:3 * i + 4] += w[:, :, :, 0].sum(0)
    torch.testing.assert_close(x.grad[0, :, :, 0], grad)
