"""Caffe's output-size arithmetic, by hand-worked cases and against every golden conv/pool case."""
import numpy as np
import pytest
from google.protobuf import text_format

from conftest import GOLDEN
from protocaffe.proto import caffe_pb2
from protocaffe.shapes import conv_out, deconv_out, pool_out


def test_hand_worked_sizes():
    assert conv_out(227, 11, 4, 0) == 55
    assert conv_out(27, 5, 1, 2) == 27
    assert conv_out(7, 3, 1, 1, dilation=2) == 5
    assert deconv_out(4, 4, 2, 1) == 8
    assert pool_out(55, 3, 2, 0) == 27           # AlexNet pool1
    assert pool_out(6, 3, 2, 0) == 3             # rounded up: ceil(3 / 2) + 1
    assert pool_out(6, 3, 2, 0, ceil=False) == 2
    assert pool_out(6, 2, 2, 1) == 4             # ceil(6 / 2) + 1 = 4, last window starts at 5 < 7
    assert pool_out(5, 2, 2, 1) == 3             # ceil(5 / 2) + 1 = 4, last would start at 6 >= 5 + 1: dropped
    assert pool_out(7, 3, 1, 1) == 7             # GoogLeNet's inception pooling keeps the size
    assert pool_out(7, 2, 4, 0) == 3             # unpadded: ceil(5 / 4) + 1, the last starting at 8
    assert pool_out(7, 2, 4, 0, padded=True) == 2  # the other axis padded: that window is dropped


@pytest.mark.parametrize("case", sorted(f"{p.parent.name}/{p.name}" for p in
                                        [*(GOLDEN / "layers").iterdir(), *(GOLDEN / "layers2").iterdir()]
                                        if p.name.startswith(("pool_", "conv_", "deconv_"))))
def test_golden_output_sizes(case):
    net = text_format.Parse((GOLDEN / case / "net.prototxt").read_text(), caffe_pb2.NetParameter())
    layer = next(l for l in net.layer if l.name == "test")
    h, w = net.layer[0].input_param.shape[0].dim[2:]
    out_h, out_w = np.load(GOLDEN / case / "io.npz")["out_out"].shape[2:]
    if layer.type == "Pooling":
        p = layer.pooling_param
        if p.global_pooling:
            assert (out_h, out_w) == (1, 1)
            return
        kh = p.kernel_h if p.HasField("kernel_h") else p.kernel_size
        kw = p.kernel_w if p.HasField("kernel_w") else p.kernel_size
        sh = p.stride_h if p.HasField("stride_h") else p.stride
        sw = p.stride_w if p.HasField("stride_w") else p.stride
        ph = p.pad_h if p.HasField("pad_h") else p.pad
        pw = p.pad_w if p.HasField("pad_w") else p.pad
        padded = bool(ph or pw)
        assert (pool_out(h, kh, sh, ph, padded=padded), pool_out(w, kw, sw, pw, padded=padded)) == (out_h, out_w)
    else:
        p = layer.convolution_param
        kh = p.kernel_h if p.HasField("kernel_h") else p.kernel_size[0]
        kw = p.kernel_w if p.HasField("kernel_w") else p.kernel_size[-1]
        sh = p.stride_h if p.HasField("stride_h") else (p.stride[0] if len(p.stride) else 1)
        sw = p.stride_w if p.HasField("stride_w") else (p.stride[-1] if len(p.stride) else 1)
        ph = p.pad_h if p.HasField("pad_h") else (p.pad[0] if len(p.pad) else 0)
        pw = p.pad_w if p.HasField("pad_w") else (p.pad[-1] if len(p.pad) else 0)
        d = p.dilation[0] if len(p.dilation) else 1
        fn = conv_out if layer.type == "Convolution" else deconv_out
        assert (fn(h, kh, sh, ph, d), fn(w, kw, sw, pw, d)) == (out_h, out_w)
