"""ShuffleNet's ShuffleChannel, the depthwise convolutions, ReLU6 and SENet's Axpy: each against a
NumPy rendering of the fork's loop, and in a unit of the net it comes from against OpenCV 4's dnn
(a ShuffleNet unit, a MobileNet v2 block, an SE block), plus the forks' binary numbers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fork_nets import bn_scale_relu, conv, input_layer, layer, length_field, make, max_relative, run_both
from protocaffe import dialects, schema
from protocaffe.dialects.wire import VARINT, _encode_varint
from protocaffe.errors import CaffeError
from protocaffe.net import read_net_param
from protocaffe.proto import caffe_pb2




# ---- ShuffleChannel ----------------------------------------------------------------------

def np_shuffle_channel(x, group):
    """shuffle_channel_layer.cpp: output channel j * group + i is input channel i * (C / group) + j."""
    out = np.empty_like(x)
    per = x.shape[1] // group
    for i in range(group):
        for j in range(per):
            out[:, j * group + i] = x[:, i * per + j]
    return out


def shuffle(group, shape):
    return make(f'name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param {{ group: {group} }}',
                [shape])


def test_shuffle_channel_is_the_forks_permutation():
    x = np.arange(1, 7, dtype=np.float32).reshape(1, 6, 1, 1)
    assert shuffle(3, x.shape)(torch.from_numpy(x)).numpy().ravel().tolist() == [1, 3, 5, 2, 4, 6]
    x = np.random.default_rng(0).standard_normal((2, 12, 3, 4)).astype(np.float32)
    for group in (2, 3, 4):
        xt = torch.from_numpy(x).requires_grad_()
        y = shuffle(group, x.shape)(xt)
        np.testing.assert_array_equal(y.detach().numpy(), np_shuffle_channel(x, group))
        y.backward(y.detach())  # the inverse permutation brings the values back
        np.testing.assert_array_equal(xt.grad.numpy(), x)


def test_shuffle_channel_needs_channels_divisible_by_group():
    with pytest.raises(CaffeError, match="the 10 channels must split into group 3 equal groups"):
        shuffle(3, (1, 10, 2, 2))


# ---- depthwise convolutions --------------------------------------------------------------------

def test_convolution_depthwise_ignores_num_output_and_group():
    """PR #5665's layer: one filter per input channel whatever num_output and group say."""
    dw = make('name: "dw" type: "ConvolutionDepthwise" bottom: "x" top: "y" convolution_param { num_output: 5 '
              'group: 1 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "gaussian" } bias_filler { type: '
              '"gaussian" } }', [(2, 3, 7, 8)])
    assert tuple(dw.weight.shape) == (3, 1, 3, 3) and tuple(dw.bias.shape) == (3,)
    x = torch.randn(2, 3, 7, 8, generator=torch.Generator().manual_seed(0))
    y = dw(x)
    assert dw.top_shapes([(2, 3, 7, 8)]) == [(2, 3, 4, 4)]
    w, b = dw.weight.detach().numpy(), dw.bias.detach().numpy()
    ref = np.stack([np.stack([_np_conv_plane(x[n, c].numpy(), w[c, 0], 1, 2) + b[c] for c in range(3)])
                    for n in range(2)])
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-5, atol=1e-5)


def _np_conv_plane(x, w, pad, stride):
    xp = np.pad(x, pad)
    kh, kw = w.shape
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw))[::stride, ::stride]
    return np.einsum("hwij,ij->hw", windows, w)


def test_depthwise_convolution_is_convolution():
    """yonghenglh6's layer runs BVLC's grouped convolution, group and num_output honoured."""
    text = ('bottom: "x" top: "y" convolution_param { num_output: 8 group: 4 kernel_size: 3 pad: 2 dilation: 2 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    dw = make('name: "dw" type: "DepthwiseConvolution" ' + text, [(2, 4, 6, 6)])
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dw(x), F.conv2d(x, dw.weight, dw.bias, 1, 2, 2, 4))
    assert tuple(dw.weight.shape) == (8, 1, 3, 3)


# ---- ReLU6 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu6_forward_and_backward_are_the_forks(slope):
    """relu6_layer.cpp (RuiminChen; chuanqi305's is the slope-0 case): forward
    min(max(x, 0) + slope min(x, 0), 6), backward dy ((x > 0) + slope (x <= 0)) (x < 6)."""
    x = np.array([-3, -0.5, 0, 0.5, 3, 5.999, 6, 7], np.float64)
    relu6 = make(f'name: "r" type: "ReLU6" bottom: "x" top: "x" relu6_param {{ negative_slope: {slope} }}', [x.shape])
    xt = torch.from_numpy(x).requires_grad_()
    y = relu6(xt)
    slope = float(np.float32(slope))  # the field is a float
    np.testing.assert_array_equal(y.detach().numpy(), np.minimum(np.maximum(x, 0) + slope * np.minimum(x, 0), 6))
    y.backward(torch.ones_like(y))
    np.testing.assert_array_equal(xt.grad.numpy(), ((x > 0) + slope * (x <= 0)) * (x < 6))


# ---- Axpy ------------------------------------------------------------------------------------

def test_axpy_is_senets_a_times_x_plus_y():
    """axpy_layer.cpp: top = a[n, c] x + y (bottoms a, x, y); da = sum over (H, W) of dtop x,
    dx = a dtop, dy = dtop."""
    rng = np.random.default_rng(1)
    a, x, y = rng.standard_normal((2, 3, 1, 1)), rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    axpy = make('name: "a" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "t"', [a.shape, x.shape, y.shape])
    at, xt, yt = (torch.from_numpy(v).requires_grad_() for v in (a, x, y))
    top = axpy(at, xt, yt)
    np.testing.assert_allclose(top.detach().numpy(), a * x + y, rtol=1e-12)
    dtop = rng.standard_normal(x.shape)
    top.backward(torch.from_numpy(dtop))
    np.testing.assert_allclose(at.grad.numpy(), (dtop * x).sum((2, 3), keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), a * dtop, rtol=1e-12)
    np.testing.assert_array_equal(yt.grad.numpy(), dtop)


def test_axpy_checks_its_shapes():
    with pytest.raises(CaffeError, match=r"needs a \(N, C\) or \(N, C, 1, 1\), and x and y of one shape"):
        make('name: "a" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "t"', [(2, 3, 2, 2), (2, 3, 2, 2),
                                                                                       (2, 3, 2, 2)])


# ---- units of the forks' nets against OpenCV -------------------------------------------------

def shufflenet_units(groups=3):
    """Two ShuffleNet units (g = 3) as farmingyard/ShuffleNet writes them: 1x1 group conv + BN +
    ReLU, ShuffleChannel, ConvolutionDepthwise 3x3 + BN, 1x1 group conv + BN; the stride-2 unit
    concatenates a 3x3/2 AVE-pooled shortcut (14 -> 7 rounding up, as the 3x3/2 padded conv),
    the stride-1 unit adds its input (Eltwise)."""
    text = input_layer("data", (1, 24, 14, 14))
    for unit, bottom, stride, out in (("u1", "data", 2, 24), ("u2", "u1", 1, 48)):
        text += conv(f"{unit}_conv1", bottom, 18, 1, group=groups, bias=False)
        text += bn_scale_relu(f"{unit}_conv1", f"{unit}_conv1")
        text += layer(f"{unit}_shuffle", "ShuffleChannel", [f"{unit}_conv1"],
                      body=f"shuffle_channel_param {{ group: {groups} }}")
        text += conv(f"{unit}_conv2", f"{unit}_shuffle", 18, 3, stride, 1, bias=False, type_="ConvolutionDepthwise")
        text += bn_scale_relu(f"{unit}_conv2", f"{unit}_conv2", relu=False)
        text += conv(f"{unit}_conv3", f"{unit}_conv2", out, 1, group=groups, bias=False)
        text += bn_scale_relu(f"{unit}_conv3", f"{unit}_conv3", relu=False)
        if stride == 2:
            text += layer(f"{unit}_pool", "Pooling", [bottom],
                          body="pooling_param { pool: AVE kernel_size: 3 stride: 2 }")
            text += layer(f"{unit}_join", "Concat", [f"{unit}_pool", f"{unit}_conv3"])
        else:
            text += layer(f"{unit}_join", "Eltwise", [bottom, f"{unit}_conv3"])
        text += layer(f"{unit}_relu", "ReLU", [f"{unit}_join"], [unit])
    return text


def test_shufflenet_units_compute_opencvs_output(tmp_path):
    x = np.random.default_rng(2).standard_normal((1, 24, 14, 14)).astype(np.float32)
    outputs = ["u1_shuffle", "u1_join", "u2_join"]
    ours, theirs = run_both(tmp_path, shufflenet_units(), {"data": x}, outputs)
    assert ours[-1].shape == (1, 48, 7, 7)
    for name, a, b in zip(outputs, ours, theirs):
        assert a.shape == b.shape and max_relative(a, b) < 1e-4, (name, max_relative(a, b))


def mobilenet_v2_block(depthwise="ConvolutionDepthwise", channels=8, expand=6):
    """A MobileNet v2 inverted residual block as MobileNetv2-SSDLite writes it: 1x1 expansion +
    BN + ReLU6, depthwise 3x3 + BN + ReLU6, 1x1 projection + BN, Eltwise sum with the input."""
    wide = channels * expand
    text = input_layer("data", (1, channels, 10, 10)) + conv("expand", "data", wide, 1, bias=False)
    text += bn_scale_relu("expand", "expand", relu=False, gamma=(2, 4))
    text += layer("expand6", "ReLU6", ["expand"], body="relu6_param { engine: CAFFE }")
    text += conv("dw", "expand6", wide, 3, 1, 1, group=wide, bias=False, type_=depthwise)
    text += bn_scale_relu("dw", "dw", relu=False, gamma=(2, 4)) + layer("dw6", "ReLU6", ["dw"])
    text += conv("project", "dw6", channels, 1, bias=False) + bn_scale_relu("project", "project", relu=False)
    return text + layer("block", "Eltwise", ["data", "project"])


@pytest.mark.parametrize("depthwise", ["ConvolutionDepthwise", "DepthwiseConvolution"])
def test_mobilenet_v2_block_computes_opencvs_output(tmp_path, depthwise):
    """OpenCV maps ConvolutionDepthwise to Convolution itself; it has no DepthwiseConvolution, so
    it reads that net with the type written Convolution (the layer's semantics), same weights."""
    x = np.random.default_rng(3).standard_normal((1, 8, 10, 10)).astype(np.float32) * 3
    text = mobilenet_v2_block(depthwise)
    ours, theirs = run_both(tmp_path, text, {"data": x}, ["expand6", "dw6", "block"],
                            opencv_text=text.replace('"DepthwiseConvolution"', '"Convolution"'))
    assert (ours[1] == 6).any() and (ours[1] == 0).any()  # ReLU6 clips at both ends here
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and max_relative(a, b) < 1e-4, max_relative(a, b)


def se_block():
    """SENet's SE-ResNet block ending: residual branch, global AVE pooling, 1x1 down + ReLU,
    1x1 up + Sigmoid, and Axpy with bottoms (gate, residual branch, shortcut), as SE-ResNet-50
    (which then applies ReLU in place)."""
    text = input_layer("data", (1, 16, 8, 8)) + conv("conv_increase", "data", 16, 3, pad=1)
    text += layer("pool", "Pooling", ["conv_increase"], body="pooling_param { pool: AVE global_pooling: true }")
    text += conv("down", "pool", 4, 1) + layer("down_relu", "ReLU", ["down"], ["down"])
    text += conv("up", "down", 16, 1) + layer("prob", "Sigmoid", ["up"], ["up"])
    return text + layer("axpy", "Axpy", ["up", "conv_increase", "data"])


def test_se_block_with_axpy_computes_opencvs_output_with_its_operands_swapped(tmp_path):
    """OpenCV computes Axpy as a * bottom[2] + bottom[1], SENet as a * bottom[1] + bottom[2]
    (axpy_layer.cpp; OpenCV's importer lowers it to Scale + Eltwise): protocaffe follows SENet,
    and equals OpenCV reading the same block with bottoms 1 and 2 swapped."""
    x = np.random.default_rng(4).standard_normal((1, 16, 8, 8)).astype(np.float32)
    text = se_block()
    swapped = text.replace('bottom: "conv_increase"\n  bottom: "data"', 'bottom: "data"\n  bottom: "conv_increase"')
    assert swapped != text
    ours, theirs = run_both(tmp_path, text, {"data": x}, ["axpy"], opencv_text=swapped)
    assert max_relative(ours[0], theirs[0]) < 1e-4, max_relative(ours[0], theirs[0])
    _, as_written = run_both(tmp_path, text, {"data": x}, ["axpy"])
    assert max_relative(ours[0], as_written[0]) > 0.1  # OpenCV on SENet's own order computes something else


# ---- the forks' binary numbers and the log -----------------------------------------------------



@pytest.mark.parametrize("number, fork", [(208, "chuanqi305"), (100000, "RuiminChen"), (211, "eric612")])
def test_relu6_param_at_each_forks_number(tmp_path, number, fork):
    params = _encode_varint(1 << 3 | 5) + np.float32(0.25).tobytes() + _encode_varint(2 << 3 | VARINT) + b"\x01"
    head = caffe_pb2.LayerParameter(name="relu", type="ReLU6", bottom=["x"], top=["x"])
    path = tmp_path / "net.caffemodel"
    path.write_bytes(length_field(100, head.SerializeToString() + length_field(number, params)))
    p = schema.get(dialects.read_binary(path, caffe_pb2.NetParameter).layer[0], "relu6_param")
    assert p.negative_slope == 0.25 and p.engine == 1, fork


def test_shuffle_channel_param_reads_at_164(tmp_path):
    head = caffe_pb2.LayerParameter(name="s", type="ShuffleChannel", bottom=["x"], top=["y"])
    path = tmp_path / "net.caffemodel"
    path.write_bytes(length_field(100, head.SerializeToString() + length_field(164, _encode_varint(1 << 3) + b"\x03")))
    assert schema.get(dialects.read_binary(path, caffe_pb2.NetParameter).layer[0], "shuffle_channel_param").group == 3


def test_the_forks_are_named_in_the_log(tmp_path, logged):
    path = tmp_path / "mobile.prototxt"
    path.write_text(shufflenet_units() + layer("r6", "ReLU6", ["u2"], ["u2"]) + layer("g", "Sigmoid", ["u2"]) +
                    layer("axpy", "Axpy", ["g", "u2", "u2"]))
    read_net_param(path)
    lines = {r.getMessage() for r in logged.records if r.getMessage().startswith("Reading ")}
    assert lines == {
        f"Reading {path} as MobileNet forks (chuanqi305, RuiminChen, farmingyard, yonghenglh6) "
        f"(type ConvolutionDepthwise, type ReLU6)",
        f"Reading {path} as ShuffleNet (farmingyard/ShuffleNet) (shuffle_channel_param, type ShuffleChannel)",
        f"Reading {path} as SENet (hujie-frank/SENet) (type Axpy)"}
