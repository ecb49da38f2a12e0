"""SegNet and ENet (caffe-segnet, caffe-segnet-cudnn5, caffe-enet): Pooling's mask top, Upsample
(max-unpooling; and the YOLO ports' nearest-neighbour Upsample of the same type string), BN,
class-weighted SoftmaxWithLoss, their binary numbers, and a SegNet-like and an ENet-like net.
OpenCV's dnn has none of Upsample, BN or Python layers: the references are NumPy loops written
from the forks' C++ (upsample_layer.cpp, bn_layer.cpp, softmax_loss_layer.cpp, pooling_layer.cpp)."""
import numpy as np
import pytest
import torch

from fork_nets import input_layer, layer, length_field, make
from protocaffe import dialects, schema
from protocaffe.dialects.wire import VARINT, _encode_varint
from protocaffe.errors import CaffeError
from protocaffe.net import build_net, read_net_param
from protocaffe.proto import caffe_pb2

FLT_MAX = np.float32(3.4028235e38)
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST




# ---- NumPy references, loop for loop as the forks' CPU code ------------------------------

def np_pool_out(size, k, s, p):
    out = int(np.ceil((size + 2 * p - k) / s)) + 1
    return out - 1 if p and (out - 1) * s >= size + p else out


def np_max_pool(x, k, s, p):
    """Caffe's MAX pooling with its mask (pooling_layer.cpp): windows clipped to the image,
    -FLT_MAX start, strict '>' (the first maximum in row-major order wins)."""
    n, c, h, w = x.shape
    oh, ow = np_pool_out(h, k, s, p), np_pool_out(w, k, s, p)
    top = np.full((n, c, oh, ow), -FLT_MAX, np.float32)
    mask = np.full((n, c, oh, ow), -1.0, np.float32)
    for ph in range(oh):
        for pw in range(ow):
            hs, ws = ph * s - p, pw * s - p
            he, we = min(hs + k, h), min(ws + k, w)
            for hh in range(max(hs, 0), he):
                for ww in range(max(ws, 0), we):
                    better = x[:, :, hh, ww] > top[:, :, ph, pw]
                    top[:, :, ph, pw] = np.where(better, x[:, :, hh, ww], top[:, :, ph, pw])
                    mask[:, :, ph, pw] = np.where(better, hh * w + ww, mask[:, :, ph, pw])
    return top, mask


def np_unpool(x, mask, out_h, out_w):
    """SegNet's Upsample forward: zeros, then top[mask[i]] = x[i] in input order."""
    n, c = x.shape[:2]
    top = np.zeros((n, c, out_h * out_w), x.dtype)
    for i in range(n):
        for j in range(c):
            for value, index in zip(x[i, j].ravel(), mask[i, j].ravel()):
                top[i, j, int(index)] = value
    return top.reshape(n, c, out_h, out_w)


def np_unpool_backward(dtop, mask):
    """SegNet's Upsample backward: bottom_diff[i] = top_diff[mask[i]]."""
    n, c = dtop.shape[:2]
    flat = dtop.reshape(n, c, -1)
    return np.stack([np.stack([flat[i, j][mask[i, j].astype(int)] for j in range(c)]) for i in range(n)])


def np_segnet_bn(x, scale, shift):
    """SegNet's BN in LEARN: E over (H, W) then over N; var = E[x^2] - E[x]^2; eps 1e-9."""
    mean = x.mean((2, 3)).mean(0)[None, :, None, None]
    var = (x * x).mean((2, 3)).mean(0)[None, :, None, None] - mean ** 2
    return (x - mean) / np.sqrt(var + 1e-9) * scale + shift, mean, var


def np_conv(x, weight, bias, pad=0, stride=1):
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    out = np.einsum("nchwij,ocij->nohw", windows, weight)
    return out + (bias[None, :, None, None] if bias is not None else 0)


# ---- Pooling's mask top ----------------------------------------------------------------

@pytest.mark.parametrize("k, s, p, size", [(2, 2, 0, (6, 9)), (3, 2, 1, (7, 8)), (3, 2, 0, (8, 8)), (2, 2, 0, (5, 7))])
def test_pooling_mask_is_caffes(k, s, p, size):
    """Overlapping windows, padding, ceil rounding with a clipped last window, and ties (values
    repeat), against Caffe's loop; the mask is h * W + w in the unpadded input plane."""
    x = np.random.default_rng(k + p).integers(0, 4, (2, 3) + size).astype(np.float32)
    pool = make(f'name: "p" type: "Pooling" bottom: "x" top: "y" top: "mask" '
                f'pooling_param {{ pool: MAX kernel_size: {k} stride: {s} pad: {p} }}', [x.shape])
    y, mask = pool(torch.from_numpy(x))
    ref_y, ref_mask = np_max_pool(x, k, s, p)
    np.testing.assert_array_equal(y.numpy(), ref_y)
    np.testing.assert_array_equal(mask.numpy(), ref_mask)
    assert mask.dtype == torch.float32 and pool.top_shapes([x.shape]) == [ref_y.shape] * 2


def test_a_mask_top_needs_max_pooling():
    with pytest.raises(CaffeError, match="a second top \\(the argmax mask\\) needs MAX pooling, found AVE"):
        make('name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 }',
             [(1, 1, 4, 4)])


# ---- Upsample ----------------------------------------------------------------------------

@pytest.mark.parametrize("params, in_hw, out_hw", [
    ("scale: 2", (3, 4), (6, 8)),
    ("", (3, 4), (6, 8)),                                      # SegNet's default scale 2
    ("scale_h: 2 scale_w: 3 pad_out_h: true", (3, 4), (5, 12)),
    ("scale: 2 upsample_h: 5 upsample_w: 7", (3, 4), (5, 7)),  # the size wins over scale
    ("scale: 4", (2, 2), (8, 8)),
])
def test_upsample_sizes(params, in_hw, out_hw):
    shape = (1, 2) + in_hw
    up = make(f'name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y" upsample_param {{ {params} }}',
              [shape, shape])
    assert up.top_shapes([shape, shape]) == [(1, 2) + out_hw]


@pytest.mark.parametrize("params, message", [
    ("scale: 2 scale_h: 2 scale_w: 2", "give upsample_h and upsample_w, or scale, or both scale_h and scale_w"),
    ("scale_h: 2", "give upsample_h and upsample_w, or scale, or both scale_h and scale_w"),
    ("scale: 1", "scale must exceed 1"),
    ("scale: 3 pad_out_w: true", "pad_out_h/pad_out_w need scale 2 on their axis"),
    ("upsample_h: 1 upsample_w: 4", "upsample_h and upsample_w must exceed 1"),
])
def test_upsample_setup_errors(params, message):
    with pytest.raises(CaffeError, match=f"layer 'u' \\(type Upsample\\): {message}"):
        make(f'name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y" upsample_param {{ {params} }}',
             [(1, 2, 3, 4)] * 2)


def test_upsample_unpools_with_the_pooling_mask_forward_and_backward():
    """Pool 2x2/2 (ceil: 5x7 -> 3x4), unpool to upsample_h x upsample_w 5 x 7 with that mask:
    every maximum back in place, zeros elsewhere; the gradient gathers at the mask."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    pooled, mask = np_max_pool(x, 2, 2, 0)
    decoded = rng.standard_normal(pooled.shape).astype(np.float32)
    up = make('name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y" '
              'upsample_param { upsample_h: 5 upsample_w: 7 }', [pooled.shape] * 2)
    data = torch.from_numpy(decoded).requires_grad_()
    y = up(data, torch.from_numpy(mask))
    np.testing.assert_array_equal(y.detach().numpy(), np_unpool(decoded, mask, 5, 7))
    np.testing.assert_array_equal(up(torch.from_numpy(pooled), torch.from_numpy(mask)).numpy(),
                                  np.where(np_unpool(pooled, mask, 5, 7) != 0, x, 0))
    dtop = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(torch.from_numpy(dtop))
    np.testing.assert_array_equal(data.grad.numpy(), np_unpool_backward(dtop, mask))


def test_upsample_repeated_indices_last_wins_and_every_one_gets_the_gradient():
    """Overlapping 3x3/2 windows share maxima: the fork's loop keeps the last value written,
    and its backward gives each input the gradient at its index."""
    mask = np.array([[[[0, 2], [2, 8]]]], np.float32)
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    up = make('name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y" upsample_param { upsample_h: 3 '
              'upsample_w: 3 }', [x.shape] * 2)
    data = torch.from_numpy(x).requires_grad_()
    y = up(data, torch.from_numpy(mask))
    np.testing.assert_array_equal(y.detach().numpy(), np_unpool(x, mask, 3, 3))
    assert y.detach().numpy().ravel()[2] == 3
    dtop = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    y.backward(torch.from_numpy(dtop))
    np.testing.assert_array_equal(data.grad.numpy(), [[[[0, 2], [2, 8]]]])


def test_upsample_mask_outside_the_output_is_one_line():
    up = make('name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y" upsample_param { scale: 2 }',
              [(1, 1, 2, 2)] * 2)
    with pytest.raises(CaffeError, match=r"layer 'u' \(type Upsample\): mask index 16 is outside the 4x4 output"):
        up(torch.ones(1, 1, 2, 2), torch.tensor([[[[0.0, 1], [2, 16]]]]))


def test_yolo_upsample_is_nearest_neighbour():
    """One bottom: the YOLO ports' layer, out[h, w] = in[h / s, w / s]; the backward sums each block."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    up = make('name: "u" type: "Upsample" bottom: "x" top: "y" upsample_param { scale: 3 }', [x.shape])
    y = up(x)
    ref = np.repeat(np.repeat(x.detach().numpy(), 3, 2), 3, 3)
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    dtop = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y.backward(dtop)
    np.testing.assert_allclose(x.grad.numpy(), dtop.numpy().reshape(2, 3, 4, 3, 5, 3).sum((3, 5)))
    no_scale = make('name: "u" type: "Upsample" bottom: "x" top: "y"', [x.shape])
    assert no_scale.top_shapes([x.shape]) == [x.shape]  # YOLO's default scale is 1


def test_yolo_upsample_with_segnet_fields_names_the_missing_mask():
    with pytest.raises(CaffeError, match="upsample_h belongs to SegNet's max-unpooling Upsample, which takes "
                                         "the pooling mask as a second bottom; found one bottom"):
        make('name: "u" type: "Upsample" bottom: "x" top: "y" upsample_param { upsample_h: 4 upsample_w: 4 }',
             [(1, 1, 2, 2)])


# ---- BN (SegNet's) -------------------------------------------------------------------------

@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_segnet_bn_learn_uses_the_batch_in_every_phase(phase):
    x = np.random.default_rng(2).standard_normal((4, 3, 5, 6)).astype(np.float64) * 3 + 1
    bn = make('name: "bn" type: "BN" bottom: "x" top: "y" top: "mean" top: "var" bn_param { bn_mode: LEARN '
              'scale_filler { type: "gaussian" } shift_filler { type: "gaussian" } }', [x.shape], phase).double()
    scale, shift = (t.detach().numpy() for t in bn.blobs)
    assert scale.shape == shift.shape == (1, 3, 1, 1) and len(bn.blobs) == 2
    y, mean, var = (t.detach().numpy() for t in bn(torch.from_numpy(x)))
    ref_y, ref_mean, ref_var = np_segnet_bn(x, scale, shift)
    np.testing.assert_allclose(y, ref_y, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(var, ref_var, rtol=1e-10)


def test_segnet_bn_learn_backward_is_the_forks():
    """The fork's Backward_cpu (bn_layer.cpp), step by step: dxhat = scale dy;
    dx = (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) / sqrt(var + eps); dscale = sum xhat dy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 4, 4))
    bn = make('name: "bn" type: "BN" bottom: "x" top: "y" bn_param { scale_filler { type: "gaussian" } '
              'shift_filler { type: "gaussian" } }', [x.shape]).double()
    xt = torch.from_numpy(x).requires_grad_()
    dy = rng.standard_normal(x.shape)
    bn(xt).backward(torch.from_numpy(dy))
    scale = bn.weight.detach().numpy()
    mean = x.mean((0, 2, 3), keepdims=True)
    std = np.sqrt((x * x).mean((0, 2, 3), keepdims=True) - mean ** 2 + 1e-9)
    xhat = (x - mean) / std
    dxhat = scale * dy
    dx = (dxhat - dxhat.mean((0, 2, 3), keepdims=True) - xhat * (dxhat * xhat).mean((0, 2, 3), keepdims=True)) / std
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(bn.weight.grad.numpy(), (xhat * dy).sum((0, 2, 3), keepdims=True), rtol=1e-10)
    np.testing.assert_allclose(bn.bias.grad.numpy(), dy.sum((0, 2, 3), keepdims=True), rtol=1e-10)


def test_segnet_bn_inference_is_affine():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    bn = make('name: "bn" type: "BN" bottom: "x" top: "y" bn_param { bn_mode: INFERENCE '
              'scale_filler { type: "constant" value: 2 } shift_filler { type: "constant" value: -1 } }', [x.shape])
    torch.testing.assert_close(bn(x), 2 * x - 1)
    with pytest.raises(CaffeError, match="bn_mode INFERENCE has one top, found 2"):
        make('name: "bn" type: "BN" bottom: "x" top: "y" top: "m" bn_param { bn_mode: INFERENCE }', [x.shape])


def test_bn_that_says_neither_fork_is_one_line_and_mixing_them_too():
    with pytest.raises(CaffeError, match=r"layer 'bn' \(type BN\): cannot tell SegNet's BN from PSPNet's: set "
                                         r"bn_param \{ bn_mode: LEARN \} \(SegNet, ENet\) or bn_param \{ frozen: "
                                         r"false \} \(PSPNet\)"):
        make('name: "bn" type: "BN" bottom: "x" top: "y"', [(1, 2, 2, 2)])
    with pytest.raises(CaffeError, match="bn_param mixes SegNet's bn_mode with PSPNet's frozen"):
        make('name: "bn" type: "BN" bottom: "x" top: "y" bn_param { bn_mode: LEARN frozen: true }', [(1, 2, 2, 2)])


# ---- SoftmaxWithLoss with class weights ----------------------------------------------------

def np_weighted_softmax_loss(x, label, weights, ignore):
    """softmax_loss_layer.cpp of the SegNet forks: loss = -sum w[l] log max(p_l, FLT_MIN) / count,
    diff = (p - onehot) w[l] / count, zero at ignored positions."""
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss, count, diff = 0.0, 0, p.copy()
    n, c, h, w = x.shape
    for i in range(n):
        for hh in range(h):
            for ww in range(w):
                lab = int(label[i, 0, hh, ww])
                if lab == ignore:
                    diff[i, :, hh, ww] = 0
                    continue
                loss -= np.log(max(p[i, lab, hh, ww], np.finfo(np.float32).tiny)) * weights[lab]
                diff[i, lab, hh, ww] -= 1
                diff[i, :, hh, ww] *= weights[lab]
                count += 1
    return loss / count, diff / count


def test_class_weighted_softmax_loss_is_segnets():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 3, 5))
    label = rng.integers(0, 5, (2, 1, 3, 5)).astype(np.float64)  # 4 is ignored
    weights = [0.2, 1.5, 3.0, 0.7]
    loss_layer = make('name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" loss_param { '
                      'ignore_label: 4 weight_by_label_freqs: true class_weighting: 0.2 class_weighting: 1.5 '
                      'class_weighting: 3.0 class_weighting: 0.7 }', [x.shape, label.shape]).double()
    xt = torch.from_numpy(x).requires_grad_()
    loss = loss_layer(xt, torch.from_numpy(label))
    loss.backward()
    ref_loss, ref_diff = np_weighted_softmax_loss(x, label, weights, 4)
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), ref_diff, rtol=1e-5, atol=1e-9)


def test_class_weighting_needs_one_weight_per_class():
    with pytest.raises(CaffeError, match="weight_by_label_freqs needs one class_weighting per class \\(3\\), found 2"):
        make('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "l" loss_param { '
             'weight_by_label_freqs: true class_weighting: 1 class_weighting: 2 }', [(2, 3, 4), (2, 4)])


# ---- the forks' binary files -----------------------------------------------------------------



def _layer(head, field, payload):
    return length_field(100, head.SerializeToString() + length_field(field, payload))


def _upsample_params(upsample_h, upsample_w, scale=2):
    """SegNet's UpsampleParameter on the wire: scale 1, upsample_h 6, upsample_w 7 (varints)."""
    return b"".join(_encode_varint(n << 3 | VARINT) + _encode_varint(v) for n, v in
                    ((1, scale), (6, upsample_h), (7, upsample_w)))


@pytest.mark.parametrize("number, fork", [(137, "caffe-segnet"), (147, "caffe-enet"), (149, "YOLO ports")])
def test_upsample_param_at_each_forks_number_reads_in_upsample_layers(tmp_path, number, fork):
    """137 is BVLC's embed_param and 147 its swish_param: inside an Upsample layer they are the
    fork's upsample_param; an Embed layer's 137 stays embed_param."""
    up = caffe_pb2.LayerParameter(name="up", type="Upsample", bottom=["x", "m"], top=["y"])
    embed = caffe_pb2.LayerParameter(name="embed", type="Embed", bottom=["i"], top=["e"])
    path = tmp_path / "net.caffemodel"
    path.write_bytes(_layer(up, number, _upsample_params(23, 30)) +
                     _layer(embed, 137, caffe_pb2.EmbedParameter(num_output=5, input_dim=7).SerializeToString()))
    net = dialects.read_binary(path, caffe_pb2.NetParameter)
    p = schema.get(net.layer[0], "upsample_param")
    assert (p.upsample_h, p.upsample_w, p.scale) == (23, 30, 2), fork
    assert not net.layer[0].HasField("embed_param") and not net.layer[0].HasField("swish_param")
    assert net.layer[1].embed_param.num_output == 5 and not schema.has(net.layer[1], "upsample_param")


def test_dense_image_data_param_of_caffe_segnet_moves_from_bvlcs_tile_param(tmp_path):
    data = caffe_pb2.LayerParameter(name="data", type="DenseImageData", top=["data", "label"])
    tile = caffe_pb2.LayerParameter(name="tile", type="Tile", bottom=["a"], top=["b"])
    params = length_field(1, b"train.txt") + _encode_varint(2 << 3) + _encode_varint(4)
    path = tmp_path / "net.caffemodel"
    tile_param = caffe_pb2.TileParameter(tiles=3).SerializeToString()
    path.write_bytes(_layer(data, 138, params) + _layer(tile, 138, tile_param))
    net = dialects.read_binary(path, caffe_pb2.NetParameter)
    dense = schema.get(net.layer[0], "dense_image_data_param")
    assert (dense.source, dense.batch_size) == ("train.txt", 4) and not net.layer[0].HasField("tile_param")
    assert net.layer[1].tile_param.tiles == 3


def test_loss_param_weights_read_with_the_segnet_dialect(tmp_path):
    """LossParameter 3 is the forks' weight_by_label_freqs (BVLC's normalization enum), 4 their
    class_weighting; caffe-enet writes normalization at 5."""
    loss = (_encode_varint(3 << 3 | VARINT) + b"\x01" + _encode_varint(4 << 3 | 5) + np.float32(2.5).tobytes() +
            _encode_varint(5 << 3 | VARINT) + b"\x02")
    head = caffe_pb2.LayerParameter(name="loss", type="SoftmaxWithLoss", bottom=["x", "y"], top=["l"])
    path = tmp_path / "net.caffemodel"
    path.write_bytes(_layer(head, 101, loss))
    fork = dialects.read_binary(path, caffe_pb2.NetParameter, dialect="segnet").layer[0].loss_param
    assert schema.get(fork, "weight_by_label_freqs") and list(schema.get(fork, "class_weighting")) == [2.5]
    assert fork.normalization == caffe_pb2.LossParameter.BATCH_SIZE
    bvlc = dialects.read_binary(path, caffe_pb2.NetParameter).layer[0].loss_param
    assert bvlc.normalization == caffe_pb2.LossParameter.VALID and not schema.get(bvlc, "weight_by_label_freqs")


def test_segnet_files_are_named_in_the_log_and_a_bare_bn_is_segnets(tmp_path, logged):
    path = tmp_path / "segnet.prototxt"
    path.write_text(input_layer("data", (1, 2, 4, 4)) + layer("bn", "BN", ["data"]) +
                    layer("pool", "Pooling", ["bn"], ["pool", "mask"], "pooling_param { pool: MAX kernel_size: 2 "
                          "stride: 2 }") + layer("up", "Upsample", ["pool", "mask"], body="upsample_param { "
                                                                                      "upsample_h: 4 upsample_w: 4 }"))
    param = read_net_param(path)
    assert schema.get(param.layer[1], "bn_param").HasField("bn_mode")
    lines = {r.getMessage() for r in logged.records if r.getMessage().startswith("Reading ")}
    assert lines == {f"Reading {path} as SegNet/ENet (caffe-segnet, caffe-segnet-cudnn5, caffe-enet) "
                     f"(upsample_h, upsample_w)"}


# ---- DenseImageData ----------------------------------------------------------------------

def _write_pairs(tmp_path, count, shape, rng):
    """``count`` gray images and label images holding the same pixels; the list file's path."""
    import cv2
    lines = []
    for i in range(count):
        pixels = rng.integers(0, 256, shape).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"img{i}.png"), pixels)
        cv2.imwrite(str(tmp_path / f"lab{i}.png"), pixels)
        lines.append(f"img{i}.png lab{i}.png")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "pairs.txt"


def test_dense_image_data_mirrors_and_crops_image_and_label_together(tmp_path):
    import cv2
    rng = np.random.default_rng(5)
    source = _write_pairs(tmp_path, 3, (12, 16), rng)
    data = make(f'name: "d" type: "DenseImageData" top: "data" top: "label" dense_image_data_param {{ source: '
                f'"{source}" root_folder: "{tmp_path}/" batch_size: 2 is_color: false mirror: true crop_height: 8 '
                f'crop_width: 10 }}', [], TRAIN)
    assert data.top_shapes([]) == [(2, 1, 8, 10), (2, 1, 8, 10)]
    sources = [cv2.imread(str(tmp_path / f"img{i}.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) for i in range(3)]
    flips = set()
    for batch in range(6):
        images, labels = (t.numpy() for t in data())
        np.testing.assert_array_equal(images, labels)
        for j in range(2):
            full = sources[(batch * 2 + j) % 3]
            found = [(flip, y, x) for flip in (False, True) for y in range(5) for x in range(7)
                     if np.array_equal((full[:, ::-1] if flip else full)[y:y + 8, x:x + 10], images[j, 0])]
            assert found, "each item is a (mirrored) window of its image"
            flips.add(found[0][0])
    assert flips == {False, True}


def test_dense_image_data_resizes_the_label_by_nearest_neighbour_to_its_divided_size(tmp_path):
    import cv2
    source = _write_pairs(tmp_path, 1, (12, 16), np.random.default_rng(6))
    data = make(f'name: "d" type: "DenseImageData" top: "data" top: "label" transform_param {{ scale: 0.5 '
                f'mean_value: 10 }} dense_image_data_param {{ source: "{source}" root_folder: "{tmp_path}/" '
                f'batch_size: 1 new_height: 6 new_width: 8 label_divide_factor: 2 }}', [])
    image, label = (t.numpy()[0, 0] for t in data())
    gray = cv2.imread(str(tmp_path / "img0.png"), cv2.IMREAD_COLOR)
    expected = (cv2.resize(gray, (8, 6), interpolation=cv2.INTER_LINEAR).astype(np.float32) - 10) * np.float32(0.5)
    np.testing.assert_array_equal(image, expected[:, :, 0])
    np.testing.assert_array_equal(label, cv2.resize(cv2.imread(str(tmp_path / "lab0.png"), cv2.IMREAD_GRAYSCALE),
                                                    (4, 3), interpolation=cv2.INTER_NEAREST))


def test_dense_image_data_refuses_transform_param_mirror():
    with pytest.raises(CaffeError, match="transform_param's mirror and crop_size would move the image and its "
                                         "label apart"):
        make('name: "d" type: "DenseImageData" top: "a" top: "b" transform_param { mirror: true } '
             'dense_image_data_param { source: "x" batch_size: 1 }', [])


# ---- a SegNet-shaped and an ENet-shaped net -------------------------------------------------

def _conv(name, bottom, out, kernel, stride=1, pad=0, type_="Convolution"):
    return layer(name, type_, [bottom], body=f'convolution_param {{ num_output: {out} kernel_size: {kernel} '
                                              f'stride: {stride} pad: {pad} weight_filler {{ type: "gaussian" '
                                              f'std: 0.3 }} bias_filler {{ type: "gaussian" std: 0.1 }} }}')


def _bn(name, bottom, mode):
    fillers = 'scale_filler { type: "uniform" min: 0.5 max: 1.5 } shift_filler { type: "gaussian" std: 0.2 }'
    return layer(name, "BN", [bottom], [bottom], f"bn_param {{ bn_mode: {mode} {fillers} }}")


def _pool(name, bottom):
    return layer(name, "Pooling", [bottom], [name, f"{name}_mask"],
                 "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")


def segnet_like(bn_mode="LEARN"):
    """SegNet's encoder-decoder in small: conv-BN-ReLU and MAX pooling with masks down
    (10x14 -> 5x7 -> 3x4, the second rounding up), Upsample with those masks back up (to
    upsample_h x upsample_w 5 x 7, as SegNet-Tutorial sizes its odd maps, then scale 2), a
    4-class score map."""
    text = ""
    for name, bottom, out in (("conv1", "data", 6), ("conv2", "pool1", 8)):
        text += _conv(name, bottom, out, 3, pad=1) + _bn(f"{name}_bn", name, bn_mode)
        text += layer(f"{name}_relu", "ReLU", [name], [name]) + _pool(f"pool{name[-1]}", name)
    text += layer("up2", "Upsample", ["pool2", "pool2_mask"],
                  body="upsample_param { scale: 2 upsample_h: 5 upsample_w: 7 }")
    text += _conv("conv2_D", "up2", 6, 3, pad=1) + _bn("conv2_D_bn", "conv2_D", bn_mode)
    text += layer("conv2_D_relu", "ReLU", ["conv2_D"], ["conv2_D"])
    text += layer("up1", "Upsample", ["conv2_D", "pool1_mask"], body="upsample_param { scale: 2 }")
    return text + _conv("score", "up1", 4, 3, pad=1)


def _blobs(net, name):
    return [t.detach().double().numpy() for t in net.layer_by_name()[name].blobs]


def test_segnet_like_net_matches_numpy(tmp_path):
    path = tmp_path / "segnet.prototxt"
    path.write_text(input_layer("data", (2, 3, 10, 14)) + segnet_like())
    net = build_net(path, seed=3)
    x = np.random.default_rng(7).standard_normal((2, 3, 10, 14))
    with torch.no_grad():
        blobs = net(data=torch.from_numpy(x).float())

    def conv_bn_relu(h, name):
        h = np_conv(h, *_blobs(net, name), pad=1)
        return np.maximum(np_segnet_bn(h, *_blobs(net, f"{name}_bn"))[0], 0)
    h1 = conv_bn_relu(x, "conv1")
    p1, m1 = np_max_pool(h1.astype(np.float32), 2, 2, 0)
    h2 = conv_bn_relu(p1.astype(np.float64), "conv2")
    p2, m2 = np_max_pool(h2.astype(np.float32), 2, 2, 0)
    assert p2.shape[2:] == (3, 4)
    np.testing.assert_array_equal(blobs["pool2_mask"].numpy(), m2)
    d2 = conv_bn_relu(np_unpool(p2.astype(np.float64), m2, 5, 7), "conv2_D")
    score = np_conv(np_unpool(d2, m1, 10, 14), *_blobs(net, "score"), pad=1)
    np.testing.assert_allclose(blobs["score"].numpy(), score, rtol=1e-4, atol=1e-4 * np.abs(score).max())


def enet_like():
    """ENet's blocks in small: the initial block (conv 3x3/2 beside MAX 2x2/2, concatenated),
    a downsampling bottleneck (MAX pooling with mask; 2x2/2, 3x3, 1x1 convolutions with BN,
    PReLU and the Python spatial dropout; Eltwise sum), and an upsampling bottleneck (1x1 conv
    and Upsample with that mask beside 1x1, Deconvolution 2x2/2, 1x1; Eltwise sum). BN in
    INFERENCE mode, as ENet's deploy nets."""
    t = _conv("conv0", "data", 13, 3, 2, 1) + layer("pool0", "Pooling", ["data"], body="pooling_param { pool: MAX "
                                                                                     "kernel_size: 2 stride: 2 }")
    t += layer("init", "Concat", ["conv0", "pool0"]) + _bn("init_bn", "init", "INFERENCE")
    t += layer("init_prelu", "PReLU", ["init"], ["init"])
    t += _pool("pool1", "init")
    for name, bottom, out, k, s, pad in (("b1a", "init", 4, 2, 2, 0), ("b1b", "b1a", 4, 3, 1, 1),
                                         ("b1c", "b1b", 16, 1, 1, 0)):
        t += _conv(name, bottom, out, k, s, pad) + _bn(f"{name}_bn", name, "INFERENCE")
        if name != "b1c":
            t += layer(f"{name}_prelu", "PReLU", [name], [name])
    t += layer("drop1", "Python", ["b1c"], body='python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer" '
                                                'param_str: "{\'phase\': \'TEST\', \'p\': \'0.01\'}" }')
    t += layer("add1", "Eltwise", ["pool1", "drop1"]) + layer("add1_prelu", "PReLU", ["add1"], ["add1"])
    t += _conv("b2m", "add1", 16, 1) + _bn("b2m_bn", "b2m", "INFERENCE")
    t += layer("up2", "Upsample", ["b2m", "pool1_mask"], body="upsample_param { scale: 2 }")
    for name, bottom, out, k, s, type_ in (("b2a", "add1", 4, 1, 1, "Convolution"),
                                           ("b2b", "b2a", 4, 2, 2, "Deconvolution"),
                                           ("b2c", "b2b", 16, 1, 1, "Convolution")):
        t += _conv(name, bottom, out, k, s, type_=type_) + _bn(f"{name}_bn", name, "INFERENCE")
        if name != "b2c":
            t += layer(f"{name}_prelu", "PReLU", [name], [name])
    return t + layer("add2", "Eltwise", ["up2", "b2c"]) + layer("add2_prelu", "PReLU", ["add2"], ["add2"])


def test_enet_like_blocks_match_numpy(tmp_path):
    """The Python spatial dropout runs (module found on the path, as in caffe-enet) and in TEST
    scales by 1/(1-p); Upsample reuses the downsampling bottleneck's mask."""
    path = tmp_path / "enet.prototxt"
    path.write_text(input_layer("data", (1, 3, 16, 16)) + enet_like())
    net = build_net(path, seed=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lay in net.layer_by_name().values():
            if lay.type == "PReLU":
                lay.weight.uniform_(0.1, 0.4, generator=g)
    x = np.random.default_rng(8).standard_normal((1, 3, 16, 16))
    with torch.no_grad():
        blobs = net(data=torch.from_numpy(x).float())

    def conv_bn(h, name, stride=1, pad=0):
        weight, bias = _blobs(net, name)
        h = np_conv(h, weight, bias, pad, stride)
        scale, shift = _blobs(net, f"{name}_bn")
        return h * scale + shift

    def prelu(h, name):
        slope = _blobs(net, name)[0][None, :, None, None]
        return np.maximum(h, 0) + slope * np.minimum(h, 0)

    init = np.concatenate([np_conv(x, *_blobs(net, "conv0"), 1, 2), np_max_pool(x.astype(np.float32), 2, 2, 0)[0]], 1)
    init = prelu(init * _blobs(net, "init_bn")[0] + _blobs(net, "init_bn")[1], "init_prelu")
    pool1, mask1 = np_max_pool(init.astype(np.float32), 2, 2, 0)
    b1 = prelu(conv_bn(init, "b1a", 2), "b1a_prelu")
    b1 = conv_bn(prelu(conv_bn(b1, "b1b", pad=1), "b1b_prelu"), "b1c") / (1 - 0.01)
    add1 = prelu(pool1 + b1, "add1_prelu")
    main = np_unpool(conv_bn(add1, "b2m"), mask1, 8, 8)
    b2 = prelu(conv_bn(add1, "b2a"), "b2a_prelu")
    weight, bias = _blobs(net, "b2b")
    b2 = np.einsum("ncij,coab->noiajb", b2, weight).reshape(1, 4, 8, 8) + bias[None, :, None, None]
    b2 = prelu(b2 * _blobs(net, "b2b_bn")[0] + _blobs(net, "b2b_bn")[1], "b2b_prelu")
    out = prelu(main + conv_bn(b2, "b2c"), "add2_prelu")
    np.testing.assert_allclose(blobs["add2"].numpy(), out, rtol=1e-4, atol=1e-4 * np.abs(out).max())


def test_segnet_like_net_trains(tmp_path):
    """Upsample, BN (LEARN) and the class-weighted loss through the solver: labelled pixels
    (bright or dark, the image border ignored) from DenseImageData; the loss falls."""
    import cv2
    from protocaffe.solver.solver import CaffeSolver as Solver
    rng = np.random.default_rng(9)
    lines = []
    for i in range(4):
        image = rng.integers(0, 256, (10, 14, 3)).astype(np.uint8)
        label = (image.mean(2) > 127).astype(np.uint8)
        label[0, :] = 255
        cv2.imwrite(str(tmp_path / f"i{i}.png"), image)
        cv2.imwrite(str(tmp_path / f"l{i}.png"), label)
        lines.append(f"i{i}.png l{i}.png")
    (tmp_path / "train.txt").write_text("\n".join(lines))
    data = layer("data", "DenseImageData", [], ["data", "label"],
                 f'transform_param {{ scale: 0.0078125 mean_value: 128 }} dense_image_data_param {{ source: '
                 f'"{tmp_path / "train.txt"}" root_folder: "{tmp_path}/" batch_size: 4 }}')
    loss = layer("loss", "SoftmaxWithLoss", ["score", "label"], body="loss_param { ignore_label: 255 "
                 "weight_by_label_freqs: true class_weighting: 1.0 class_weighting: 2.0 class_weighting: 0.5 "
                 "class_weighting: 0.5 }")
    (tmp_path / "net.prototxt").write_text(data + segnet_like() + loss)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.05 momentum: 0.9 '
                                              'lr_policy: "fixed" max_iter: 60 random_seed: 1 '
                                              'snapshot_after_train: false')
    solver = Solver(tmp_path / "solver.prototxt")
    with torch.no_grad():
        before = float(solver.net.loss(solver.net()))
    solver.step(60)
    with torch.no_grad():
        after = float(solver.net.loss(solver.net()))
    assert after < 0.5 * before, (before, after)
