"""PSPNet and DeepLab v2: Interp (output-size rules, the fork's float32 bilinear arithmetic, its
adjoint backward; OpenCV's dnn in a pyramid pooling module), PSPNet's BN (NumPy), and the forks'
binary numbers (interp_param 143 = BVLC's input_param, bn_param 152)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fork_nets import conv, input_layer, layer, length_field, make, max_relative, run_both
from protocaffe import dialects, schema
from protocaffe.dialects.wire import FIXED32, VARINT, _encode_varint
from protocaffe.errors import CaffeError
from protocaffe.net import read_net_param
from protocaffe.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST




def interp(params, shape):
    return make(f'name: "i" type: "Interp" bottom: "x" top: "y" interp_param {{ {params} }}', [shape])


def _weights(size_in, size_out):
    """caffe_cpu_interp2's per-axis terms, float32 as the fork computes them."""
    ratio = np.float32(size_in - 1) / np.float32(size_out - 1) if size_out > 1 else np.float32(0)
    for i in range(size_out):
        position = np.float32(ratio * np.float32(i))
        first = int(position)
        yield i, first, 1 if first < size_in - 1 else 0, np.float32(position - np.float32(first))


def np_interp(x, pad_beg, pad_end, out_h, out_w):
    """caffe_cpu_interp2<Dtype, false> (PSPNet util/interp.cpp), loop for loop, on the window
    cropped by the pads."""
    h, w = x.shape[2] + pad_beg + pad_end, x.shape[3] + pad_beg + pad_end
    p = x[:, :, -pad_beg:-pad_beg + h, -pad_beg:-pad_beg + w]
    if (h, w) == (out_h, out_w):
        return p.copy()
    out = np.zeros(x.shape[:2] + (out_h, out_w), np.float32)
    for i, h1, hp, lh in _weights(h, out_h):
        for j, w1, wp, lw in _weights(w, out_w):
            h0, w0 = np.float32(1) - lh, np.float32(1) - lw
            out[:, :, i, j] = h0 * (w0 * p[:, :, h1, w1] + lw * p[:, :, h1, w1 + wp]) + \
                lh * (w0 * p[:, :, h1 + hp, w1] + lw * p[:, :, h1 + hp, w1 + wp])
    return out


def np_interp_backward(dy, shape, pad_beg, pad_end):
    """caffe_cpu_interp2_backward: each output's gradient added to its four sources."""
    dx = np.zeros(shape, np.float64)
    h, w = shape[2] + pad_beg + pad_end, shape[3] + pad_beg + pad_end
    view = dx[:, :, -pad_beg:-pad_beg + h, -pad_beg:-pad_beg + w]
    if (h, w) == dy.shape[2:]:
        view += dy
        return dx
    for i, h1, hp, lh in _weights(h, dy.shape[2]):
        for j, w1, wp, lw in _weights(w, dy.shape[3]):
            g = dy[:, :, i, j]
            view[:, :, h1, w1] += (1 - lh) * (1 - lw) * g
            view[:, :, h1, w1 + wp] += (1 - lh) * lw * g
            view[:, :, h1 + hp, w1] += lh * (1 - lw) * g
            view[:, :, h1 + hp, w1 + wp] += lh * lw * g
    return dx


@pytest.mark.parametrize("params, in_hw, out_hw", [
    ("shrink_factor: 8", (473, 473), (60, 60)),
    ("zoom_factor: 8", (60, 60), (473, 473)),
    ("height: 60 width: 33", (7, 9), (60, 33)),
    ("shrink_factor: 2 zoom_factor: 3", (9, 10), (13, 13)),
    ("zoom_factor: 1", (7, 9), (7, 9)),                      # set to its default: still the zoom rule
    ("zoom_factor: 2 height: 5 width: 5", (3, 4), (5, 7)),   # a factor wins over height/width
    ("zoom_factor: 2 pad_beg: -1 pad_end: -1", (3, 4), (1, 3)),
    ("height: 4 width: 5 pad_beg: -1", (5, 6), (4, 5)),      # a crop only
])
def test_interp_output_sizes_follow_the_forks_rules(params, in_hw, out_hw):
    assert interp(params, (1, 2) + in_hw).top_shapes([(1, 2) + in_hw]) == [(1, 2) + out_hw]


@pytest.mark.parametrize("params, message", [
    ("", "interp_param needs zoom_factor, shrink_factor, or height and width"),
    ("height: 4", "interp_param needs zoom_factor, shrink_factor, or height and width"),
    ("zoom_factor: 2 pad_end: 1", "pad_beg and pad_end only crop: they must be <= 0, found 0 and 1"),
    ("shrink_factor: 0", "shrink_factor must be at least 1, found 0"),
    ("zoom_factor: 2 pad_beg: -3 pad_end: -2", "pad_beg -3 and pad_end -2 crop the 5x6 input to nothing"),
])
def test_interp_errors(params, message):
    with pytest.raises(CaffeError, match=f"layer 'i' \\(type Interp\\): {message}"):
        interp(params, (1, 2, 5, 6))


@pytest.mark.parametrize("params, in_hw, pads, out_hw", [
    ("zoom_factor: 8", (7, 9), (0, 0), (49, 65)),
    ("shrink_factor: 3", (13, 11), (0, 0), (5, 4)),
    ("height: 13 width: 4", (7, 9), (0, 0), (13, 4)),
    ("height: 1 width: 1", (7, 9), (0, 0), (1, 1)),
    ("zoom_factor: 3 pad_beg: -1 pad_end: -2", (8, 9), (-1, -2), (13, 16)),
    ("height: 3 width: 4 pad_beg: -1 pad_end: -1", (5, 6), (-1, -1), (3, 4)),
])
def test_interp_forward_and_backward_are_the_forks(params, in_hw, pads, out_hw):
    rng = np.random.default_rng(sum(in_hw))
    x = rng.standard_normal((2, 3) + in_hw).astype(np.float32)
    layer_ = interp(params, x.shape)
    xt = torch.from_numpy(x).requires_grad_()
    y = layer_(xt)
    ref = np_interp(x, *pads, *out_hw)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=2e-6, atol=2e-6)
    dy = rng.standard_normal(ref.shape).astype(np.float32)
    y.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(xt.grad.numpy(), np_interp_backward(dy.astype(np.float64), x.shape, *pads),
                               rtol=1e-5, atol=1e-5)


def test_interp_is_align_corners_bilinear():
    x = torch.randn(1, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    for size in ((19, 25), (13, 4), (60, 33)):
        ours = interp(f"height: {size[0]} width: {size[1]}", x.shape)(x)
        torch.testing.assert_close(ours, F.interpolate(x, size, mode="bilinear", align_corners=True),
                                   rtol=1e-5, atol=1e-5)


def pyramid_pooling(size=24, bins=(1, 2, 3, 6), channels=8):
    """PSPNet's pyramid pooling module in small: AVE pooling of the feature map into 1, 2, 3 and
    6 bins (kernel = stride = size / bins), 1x1 conv + ReLU each, Interp back to the map's size
    by height/width, Concat with the map, conv 3x3 + ReLU, and a final Interp by zoom_factor."""
    text = input_layer("data", (1, 3, size, size)) + conv("conv5", "data", channels, 3, pad=1)
    text += layer("conv5_relu", "ReLU", ["conv5"], ["conv5"])
    branches = ["conv5"]
    for b in bins:
        k = size // b
        text += layer(f"pool{b}", "Pooling", ["conv5"],
                      body=f"pooling_param {{ pool: AVE kernel_size: {k} stride: {k} }}")
        text += conv(f"pool{b}_conv", f"pool{b}", channels // 4, 1) + layer(f"pool{b}_relu", "ReLU", [f"pool{b}_conv"],
                                                                             [f"pool{b}_conv"])
        text += layer(f"pool{b}_interp", "Interp", [f"pool{b}_conv"],
                      body=f"interp_param {{ height: {size} width: {size} }}")
        branches.append(f"pool{b}_interp")
    text += layer("concat", "Concat", branches) + conv("conv6", "concat", channels, 3, pad=1)
    text += layer("conv6_relu", "ReLU", ["conv6"], ["conv6"])
    return text + layer("up", "Interp", ["conv6"], body="interp_param { zoom_factor: 2 }")


def test_pyramid_pooling_module_computes_opencvs_output(tmp_path):
    x = np.random.default_rng(10).standard_normal((1, 3, 24, 24)).astype(np.float32)
    outputs = ["pool1_interp", "pool3_interp", "pool6_interp", "up"]
    ours, theirs = run_both(tmp_path, pyramid_pooling(), {"data": x}, outputs)
    assert ours[-1].shape == (1, 8, 47, 47)
    for name, a, b in zip(outputs, ours, theirs):
        assert a.shape == b.shape and max_relative(a, b) < 1e-4, (name, max_relative(a, b))


# ---- PSPNet's BN -----------------------------------------------------------------------------

def psp_bn(params, shape, phase):
    return make(f'name: "bn" type: "BN" bottom: "x" top: "y" bn_param {{ slope_filler {{ type: "uniform" min: 0.5 '
                f'max: 1.5 }} bias_filler {{ type: "gaussian" std: 0.3 }} {params} }}', [shape], phase).double()


def test_pspnet_bn_in_train_normalizes_by_the_batch_and_moves_the_running_statistics():
    x = np.random.default_rng(11).standard_normal((3, 4, 5, 6)) * 2 + 0.5
    bn = psp_bn("momentum: 0.95 eps: 0.001", x.shape, TRAIN)
    assert [tuple(b.shape) for b in bn.blobs] == [(1, 4, 1, 1)] * 4
    slope, bias, mean0, var0 = (b.detach().numpy().copy() for b in bn.blobs)
    assert not mean0.any() and not var0.any()
    y = bn(torch.from_numpy(x)).detach().numpy()
    mean, var = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, slope * (x - mean) / np.sqrt(var + 0.001) + bias, rtol=1e-9, atol=1e-10)
    step = 1 - float(np.float32(0.95))  # (1 - momentum) batch + momentum running, from 0
    np.testing.assert_allclose(bn.mean.numpy(), step * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.variance.numpy(), step * var, rtol=1e-12)  # biased, not unbiased
    assert torch.autograd.gradcheck(lambda t: bn(t), torch.from_numpy(x[:2, :, :2]).requires_grad_())


@pytest.mark.parametrize("params, phase", [("frozen: true", TRAIN), ("frozen: false", TEST)])
def test_pspnet_bn_frozen_or_in_test_uses_the_running_statistics(params, phase):
    x = np.random.default_rng(12).standard_normal((2, 3, 4, 4))
    bn = psp_bn(params, x.shape, phase)
    if "true" in params:
        assert not bn.weight.requires_grad and not bn.bias.requires_grad  # frozen: lr_mult 0 in the fork
        assert (bn.variance == 1).all()                                   # the fork starts a frozen variance at 1
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bn.mean.uniform_(-1, 1, generator=g)
        bn.variance.uniform_(0.5, 2, generator=g)
    slope, bias, mean, var = (b.detach().numpy().copy() for b in bn.blobs)
    xt = torch.from_numpy(x).requires_grad_()
    y = bn(xt)
    expected = slope * (x - mean) / np.sqrt(var + float(np.float32(1e-5))) + bias
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    y.backward(torch.ones_like(y))
    gain = slope / np.sqrt(var + float(np.float32(1e-5)))
    np.testing.assert_allclose(xt.grad.numpy(), np.broadcast_to(gain, x.shape), rtol=1e-10)
    assert (bn.mean.numpy() == mean).all() and (bn.variance.numpy() == var).all()


def test_pspnet_bn_has_one_top():
    with pytest.raises(CaffeError, match="PSPNet's BN has one top, found 2"):
        make('name: "bn" type: "BN" bottom: "x" top: "y" top: "m" bn_param { frozen: true }', [(1, 2, 2, 2)])


# ---- the forks' binary numbers, and the log ------------------------------------------------



def test_interp_param_at_143_reads_in_interp_layers_and_input_param_elsewhere(tmp_path):
    """143 is BVLC's input_param: inside an Interp layer it is the forks' interp_param."""
    inp = caffe_pb2.LayerParameter(name="data", type="Input", top=["data"])
    inp.input_param.shape.add(dim=[1, 3, 8, 8])
    head = caffe_pb2.LayerParameter(name="interp", type="Interp", bottom=["data"], top=["up"])
    params = b"".join(_encode_varint(n << 3 | VARINT) + _encode_varint(v) for n, v in ((3, 8), (5, 0)))
    path = tmp_path / "pspnet.caffemodel"
    path.write_bytes(length_field(100, inp.SerializeToString()) +
                     length_field(100, head.SerializeToString() + length_field(143, params)))
    net = dialects.read_binary(path, caffe_pb2.NetParameter)
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    p = schema.get(net.layer[1], "interp_param")
    assert p.zoom_factor == 8 and p.HasField("pad_beg") and not p.HasField("shrink_factor")
    assert not net.layer[1].HasField("input_param")


def test_pspnet_bn_param_at_152_moves_with_its_fields(tmp_path):
    """PSPNet's BNParameter: slope_filler 1, bias_filler 2, momentum 3 (a float), eps 4, frozen 5."""
    params = (length_field(1, caffe_pb2.FillerParameter(type="constant", value=1).SerializeToString()) +
              length_field(2, caffe_pb2.FillerParameter(type="constant", value=0).SerializeToString()) +
              _encode_varint(3 << 3 | FIXED32) + np.float32(0.95).tobytes() + _encode_varint(5 << 3 | VARINT) + b"\x01")
    head = caffe_pb2.LayerParameter(name="bn", type="BN", bottom=["x"], top=["x"])
    path = tmp_path / "pspnet.caffemodel"
    path.write_bytes(length_field(100, head.SerializeToString() + length_field(152, params)))
    p = schema.get(dialects.read_binary(path, caffe_pb2.NetParameter).layer[0], "bn_param")
    assert p.slope_filler.value == 1 and p.bias_filler.type == "constant" and p.frozen
    assert p.momentum == pytest.approx(0.95) and not p.HasField("scale_filler") and not p.HasField("bn_mode")


def test_pspnet_files_are_named_in_the_log_and_a_bare_bn_is_pspnets(tmp_path, logged):
    path = tmp_path / "pspnet.prototxt"
    path.write_text(input_layer("data", (1, 2, 4, 4)) + layer("bn", "BN", ["data"]) +
                    layer("up", "Interp", ["bn"], body="interp_param { zoom_factor: 2 }"))
    param = read_net_param(path)
    assert schema.get(param.layer[1], "bn_param").HasField("frozen")
    lines = {r.getMessage() for r in logged.records if r.getMessage().startswith("Reading ")}
    assert lines == {f"Reading {path} as PSPNet/DeepLab v2 (hszhao/PSPNet, deeplab-public-ver2) "
                     f"(interp_param, type Interp)"}
