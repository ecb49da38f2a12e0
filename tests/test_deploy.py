"""The deployment fast path (protocaffe.deploy): folding, fusion and prepacking change no output
beyond float32 rounding. Checked on Caffe's golden nets (against Caffe's blobs and the
layer-by-layer forward), on nets with BatchNorm + Scale under random statistics (against the
layer-by-layer forward in float64), on the zoo's ResNet-50 (what folds where); Winograd's
convolutions against a float64 convolution; pycaffe's view of every blob and of its weights."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import protocaffe as caffe
from conftest import GOLDEN, assert_close
from protocaffe import net as netlib
from protocaffe.deploy import DeployedNet, Settings, blocks, folding, machine, native, settings as deploy_settings, winograd
from protocaffe.deploy.ops import FusedAffine, FusedConv
from protocaffe.fileio import parse_text
from protocaffe.layer_types.base import LAYERS, Layer
from protocaffe.proto import caffe_pb2

NETS = GOLDEN / "nets"
ROOT = GOLDEN.parents[2]
WAYS = [(channels_last, algorithm) for channels_last in (False, True) for algorithm in ("torch", "onednn")]
"""Layouts and the algorithm every convolution runs by (protocaffe.deploy.ops)."""
FLOAT32 = 2e-6
"""Largest difference from the float64 forward, relative to the blob's largest value, that
counts as float32 rounding over a few layers (each rounding is 6e-8 of its value)."""


def every(net, channels_last, algorithm, **named):
    """Settings running every layer with weights by ``algorithm``, those in ``named`` by theirs."""
    names = [layer.name for layer in net.layer_by_name().values() if layer.blobs]
    return Settings(channels_last, tuple((n, named.get(n, algorithm)) for n in names))


def text_net(text, seed=3):
    return netlib.build_net(parse_text(text, caffe_pb2.NetParameter), caffe.TEST, seed=seed)


def randomize_statistics(net, seed=0):
    """BatchNorm statistics with a random scale factor (one of them 0), Scale and Bias blobs
    away from their fillers' constants."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, layer in enumerate(net.layer_by_name().values()):
            if layer.type == "BatchNorm":
                factor = 0.0 if layer.name == "bn_zero" else float(torch.rand((), generator=gen)) * 3 + 0.2
                layer.mean.copy_(torch.randn(layer.mean.shape, generator=gen) * factor)
                layer.variance.copy_((torch.rand(layer.variance.shape, generator=gen) + 0.1) * factor)
                layer.scale_factor.fill_(factor)
            elif layer.type in ("Scale", "Bias"):
                for t in layer.blobs:
                    t.copy_(torch.randn(t.shape, generator=gen))
            elif layer.blobs:
                for t in layer.blobs:
                    t.copy_(torch.randn(t.shape, generator=gen) / max(1, t[0].numel()) ** 0.5)


def exact64(net, inputs):
    """The layer-by-layer forward in float64 (net and inputs converted), as float64 blobs."""
    with torch.no_grad():
        net.double()
        try:
            return net.run({k: v.double() for k, v in inputs.items()})[0]
        finally:
            net.float()


def max_error(blobs, reference):
    return {k: float((blobs[k].double() - reference[k]).abs().max() / reference[k].abs().max())
            for k in blobs}


def fused_types(deployed):
    """The Caffe layer types folded or fused into each op, or the op's own type."""
    out = []
    for op in deployed.ops:
        m = op.module
        if isinstance(m, FusedConv):
            out.append((m.head.type, tuple(a.type for a in m.affines), m.add, m.act and m.act.type))
        elif isinstance(m, FusedAffine):
            out.append(("affine", tuple(a.type for a in m.affines)))
        else:
            out.append(m.type)
    return out


# ---- Caffe's golden nets --------------------------------------------------------------

@pytest.mark.parametrize("name, prototxt", [("slim_alexnet", "slim_alexnet_deploy.prototxt"),
                                            ("slim_caffenet", "slim_caffenet_deploy.prototxt"),
                                            ("slim_caffenet", "slim_caffenet_v1.prototxt")])
@pytest.mark.parametrize("way", WAYS + [(True, "onednn", "winograd2"), (False, "torch", "winograd4"),
                                        (True, "onednn", "nnpack"), (False, "onednn", "nnpack"),
                                        (True, "onednn", "native4"), (False, "torch", "native4")])
def test_golden_nets_deployed_give_caffes_blobs(name, prototxt, way):
    if "nnpack" in way and not torch._nnpack_available():
        pytest.skip("this torch has no NNPACK for this CPU")
    if "native4" in way and native.library() is None:
        pytest.skip("no C compiler with OpenMP here to build the compiled Winograd")
    ref = np.load(NETS / f"{name}.npz")
    weights = NETS / ("slim_caffenet_v1.caffemodel" if "v1" in prototxt else f"{name}.caffemodel")
    net = netlib.build_net(str(NETS / prototxt), caffe.TEST, weights=str(weights))
    data = torch.from_numpy(ref["blob_data"])
    named = ("conv3", "conv4", "conv5") if "native4" in way else ("conv3",)  # conv4, conv5: 2 groups
    settings = every(net, *way[:2], **({n: way[2] for n in named} if len(way) > 2 else {}))
    deployed = DeployedNet(net, keep=net.blob_shapes, settings=settings)
    blobs = deployed(data=data)
    algorithms = {m.name: m.algorithm for m in deployed.fused}
    assert all(algorithms[n] == dict(settings.algorithms)[n] for n in named)
    assert set(blobs) == set(net.blob_shapes)
    for blob, value in blobs.items():
        assert_close(value.numpy(), ref[f"blob_{blob}"], what=blob)
    errors = max_error(blobs, exact64(net, {"data": data}))
    bound = 4e-5 if {"winograd4", "native4", "nnpack"} & set(way) else FLOAT32
    assert max(errors.values()) < bound, errors


@pytest.mark.parametrize("parts", [2, 3])
def test_golden_net_with_inner_products_in_row_blocks_gives_caffes_blobs(parts, monkeypatch):
    monkeypatch.setattr(blocks, "parts", lambda: parts)
    ref = np.load(NETS / "slim_caffenet.npz")
    net = netlib.build_net(str(NETS / "slim_caffenet_deploy.prototxt"), caffe.TEST,
                           weights=str(NETS / "slim_caffenet.caffemodel"))
    settings = every(net, False, "onednn", fc6="blocks", fc7="blocks", fc8="blocks")
    deployed = DeployedNet(net, keep=net.blob_shapes, settings=settings)
    blobs = deployed(data=torch.from_numpy(ref["blob_data"]))
    ips = [m for m in deployed.fused if m.head.type == "InnerProduct"]
    assert [(m.algorithm, m._prepared["blocks"].weight.shape[0]) for m in ips] == [("blocks", parts)] * 3
    for blob, value in blobs.items():
        assert_close(value.numpy(), ref[f"blob_{blob}"], what=blob)


def test_row_blocks_are_offered_with_more_than_one_thread(monkeypatch):
    net = text_net(INNER % (1, "false"))
    deployed = DeployedNet(net, settings=Settings())
    ip = next(m for m in deployed.fused if m.head.type == "InnerProduct")
    for parts, offered in [(1, ["onednn", "torch"]), (2, ["onednn", "torch", "blocks"])]:
        monkeypatch.setattr(blocks, "parts", lambda: parts)
        assert ip.algorithms() == offered


def test_golden_net_in_eval_mode_takes_the_fast_path():
    ref = np.load(NETS / "slim_caffenet.npz")
    net = netlib.build_net(str(NETS / "slim_caffenet_deploy.prototxt"), caffe.TEST,
                           weights=str(NETS / "slim_caffenet.caffemodel"))
    data = torch.from_numpy(ref["blob_data"])
    net.keep_all_blobs = False
    with torch.no_grad():
        exact = net(data=data)
        assert not net._deployed  # training mode: layer by layer
        fast = net.eval()(data=data)
    assert list(net._deployed) == [frozenset()] and set(fast) == {"prob"}
    assert_close(fast["prob"].numpy(), exact["prob"].numpy(), rtol=1e-6, atol=1e-7)
    assert net(data=data.requires_grad_())["prob"].requires_grad  # autograd on: layer by layer


# ---- BatchNorm + Scale with random statistics ----------------------------------------------

FOLDS = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "in2" type: "Input" top: "x2" input_param { shape { dim: 2 dim: 4 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 6
        kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "scale" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "conv2" type: "Convolution" bottom: "c" top: "c2" convolution_param { num_output: 6
        kernel_size: 3 group: 2 } }
layer { name: "bn_zero" type: "BatchNorm" bottom: "c2" top: "b2" }
layer { name: "scale2" type: "Scale" bottom: "b2" top: "s2" }
layer { name: "pool" type: "Pooling" bottom: "s2" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "bn3" type: "BatchNorm" bottom: "p" top: "p" }
layer { name: "scale3" type: "Scale" bottom: "p" top: "p" scale_param { bias_term: true } }
layer { name: "bias3" type: "Bias" bottom: "p" top: "p" }
layer { name: "deconv" type: "Deconvolution" bottom: "p" top: "d" convolution_param { num_output: 4
        kernel_size: 2 stride: 2 group: 2 } }
layer { name: "bn4" type: "BatchNorm" bottom: "d" top: "d" }
layer { name: "scale4" type: "Scale" bottom: "d" top: "d" scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "d" bottom: "x2" top: "e" }
layer { name: "fc" type: "InnerProduct" bottom: "e" top: "f" inner_product_param { num_output: 5 } }
layer { name: "bn5" type: "BatchNorm" bottom: "f" top: "f" }
layer { name: "scale5" type: "Scale" bottom: "f" top: "f" scale_param { bias_term: true } }
layer { name: "fc_t" type: "InnerProduct" bottom: "f" top: "g" inner_product_param { num_output: 3
        transpose: true } }
layer { name: "scale6" type: "Scale" bottom: "g" top: "g" }
"""


def folds_net():
    net = text_net(FOLDS)
    randomize_statistics(net)
    gen = torch.Generator().manual_seed(1)
    return net, {"x": torch.randn(2, 4, 9, 9, generator=gen), "x2": torch.randn(2, 4, 8, 8, generator=gen)}


def test_every_fold_is_made():
    net, _ = folds_net()
    deployed = DeployedNet(net, settings=Settings())
    assert fused_types(deployed) == [
        "Input", "Input",
        ("Convolution", ("BatchNorm", "Scale"), False, "ReLU"),
        ("Convolution", ("BatchNorm", "Scale"), False, None),
        "Pooling",
        ("affine", ("BatchNorm", "Scale", "Bias")),
        ("Deconvolution", ("BatchNorm", "Scale"), True, None),
        ("InnerProduct", ("BatchNorm", "Scale"), False, None),
        ("InnerProduct", ("Scale",), False, None)]


@pytest.mark.parametrize("way", WAYS)
def test_folds_with_random_statistics_are_float32_rounding(way):
    net, inputs = folds_net()
    blobs = DeployedNet(net, keep=["c", "p", "e"], settings=every(net, *way))(**inputs)
    reference = exact64(net, inputs)
    with torch.no_grad():
        layer_by_layer = net.run(inputs)[0]
    errors = max_error(blobs, reference)
    assert set(errors) == {"c", "p", "e", "g"}
    assert max(errors.values()) < FLOAT32, errors
    # no worse than the unfolded net's own float32 rounding, give or take a few ulps
    own = max_error({k: layer_by_layer[k] for k in blobs}, reference)
    assert all(errors[k] < own[k] * 4 + 3e-7 for k in errors), (errors, own)


def test_a_value_read_elsewhere_or_kept_is_not_folded_away():
    net, inputs = folds_net()
    # "b2" (BatchNorm's own top) kept: the BatchNorm still folds into conv2, the Scale after it does not
    kept = DeployedNet(net, keep=["b2"], settings=Settings())
    assert fused_types(kept)[3:5] == [("Convolution", ("BatchNorm",), False, None), ("affine", ("Scale",))]
    blobs = kept(**inputs)
    assert max_error({"b2": blobs["b2"]}, exact64(net, inputs))["b2"] < FLOAT32


TWO_READERS = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "copy" type: "Power" bottom: "c" top: "c_copy" }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "sum" type: "Eltwise" bottom: "c" bottom: "c_copy" top: "s" }
"""


def test_a_value_read_twice_is_not_folded_away():
    net = text_net(TWO_READERS)
    randomize_statistics(net)
    deployed = DeployedNet(net, settings=Settings())
    assert fused_types(deployed) == ["Input", ("Convolution", (), False, None), "Power",
                                     ("affine", ("BatchNorm",)), "Eltwise"]
    inputs = {"x": torch.randn(1, 2, 5, 5)}
    assert max_error(deployed(**inputs), exact64(net, inputs))["s"] < FLOAT32


def test_weights_changed_after_packing_are_folded_again():
    net, inputs = folds_net()
    deployed = DeployedNet(net, settings=every(net, True, "onednn"))
    before = deployed(**inputs)["g"].clone()
    with torch.no_grad():
        net.layer_by_name()["scale"].weight.mul_(2)       # a version bump, as copy_from or a solver makes
    changed = deployed(**inputs)["g"]
    assert not torch.allclose(changed, before)
    assert max_error({"g": changed}, exact64(net, inputs))["g"] < FLOAT32


def test_a_fork_layer_registers_its_fold(monkeypatch):
    """A type that is a per-channel affine map joins the fold table by its type string."""
    class ChannelAffine(Layer):
        type = "TestChannelAffine"

        def setup(self, bottom_shapes):
            self.add_blob("gain", (bottom_shapes[0][1],))
            self.add_blob("offset", (bottom_shapes[0][1],))

        def top_shapes(self, bottom_shapes):
            return [bottom_shapes[0]]

        def forward(self, x):
            return x * self.gain.view(1, -1, 1, 1) + self.offset.view(1, -1, 1, 1)

    monkeypatch.setitem(LAYERS, ChannelAffine.type, ChannelAffine)
    text = FOLDS[:FOLDS.index('layer { name: "bn"')] + \
        'layer { name: "ca" type: "TestChannelAffine" bottom: "c" top: "c" }'
    net = text_net(text)
    randomize_statistics(net)
    inputs = {"x": torch.randn(2, 4, 9, 9), "x2": torch.randn(2, 4, 8, 8)}
    assert fused_types(DeployedNet(net, settings=Settings()))[2:] == [("Convolution", (), False, None),
                                                                       "TestChannelAffine"]
    monkeypatch.setitem(folding.AFFINES, "TestChannelAffine", lambda layer: (layer.gain, layer.offset))
    deployed = DeployedNet(net, settings=Settings())
    assert fused_types(deployed)[2:] == [("Convolution", ("TestChannelAffine",), False, None)]
    assert max_error(deployed(**inputs), exact64(net, inputs))["c"] < FLOAT32


# ---- the zoo: what folds in ResNet-50 -------------------------------------------------------

def test_resnet50_folds_every_batch_norm_and_fuses_every_sum():
    net = netlib.build_net(str(ROOT / "models/zoo/resnet50/deploy.prototxt"), caffe.TEST, seed=1)
    ops = fused_types(DeployedNet(net, settings=Settings()))
    convs = [t for t in ops if t[0] == "Convolution"]
    assert len(convs) == 53 and all(t[1] == ("BatchNorm", "Scale") for t in convs)
    assert sum(t[2] for t in convs) == 16 and sum(t[3] == "ReLU" for t in convs) == 16 + 33
    assert [t for t in ops if t[0] != "Convolution"] == ["Input", "Pooling", "Pooling",
                                                         ("InnerProduct", (), False, None), "Softmax"]


# ---- Winograd ----------------------------------------------------------------------------

@pytest.mark.parametrize("m, bound", [(2, 1e-6), (4, 2e-5)])
@pytest.mark.parametrize("shape, pad", [((1, 64, 14, 14), (1, 1)), ((2, 16, 11, 7), (1, 0)),
                                        ((1, 3, 9, 10), (2, 2)), ((1, 256, 6, 6), (1, 1))])
def test_winograd_convolution_against_float64(m, bound, shape, pad):
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(shape, generator=gen)
    w = torch.randn((32, shape[1], 3, 3), generator=gen) / (9 * shape[1]) ** 0.5
    reference = F.conv2d(x.double(), w.double(), padding=pad)
    y = winograd.Winograd(w, pad, m)(x)
    assert y.shape == reference.shape
    assert float((y.double() - reference).abs().max() / reference.abs().max()) < bound
    y_last = winograd.Winograd(w, pad, m)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y_last, y, rtol=0, atol=0)
    bias = torch.randn(32, generator=gen)
    for b, relu in [(bias, False), (bias, True), (None, True)]:  # the epilogue written with the blocks
        expected = y + (0 if b is None else b.view(1, -1, 1, 1))
        expected = expected.relu() if relu else expected
        torch.testing.assert_close(winograd.Winograd(w, pad, m)(x, b, relu), expected, rtol=0, atol=1e-6)


# ---- Winograd, compiled ------------------------------------------------------------------

needs_compiler = pytest.mark.skipif(native.library() is None,
                                    reason="no C compiler with OpenMP here to build the compiled Winograd")


@needs_compiler
@pytest.mark.parametrize("shape, k, pad, groups", [((1, 64, 14, 14), 32, (1, 1), 1), ((2, 16, 11, 7), 24, (1, 0), 1),
                                                   ((1, 8, 9, 10), 16, (2, 2), 1), ((3, 256, 6, 5), 40, (0, 1), 1),
                                                   ((1, 32, 37, 29), 48, (1, 1), 1), ((2, 48, 13, 13), 48, (1, 1), 2),
                                                   ((1, 32, 10, 9), 64, (1, 1), 4)])
def test_compiled_winograd_against_float64(shape, k, pad, groups):
    gen = torch.Generator().manual_seed(shape[1])
    x = torch.randn(shape, generator=gen)
    w = torch.randn((k, shape[1] // groups, 3, 3), generator=gen) / (9 * shape[1]) ** 0.5
    bias = torch.randn(k, generator=gen)
    reference = F.conv2d(x.double(), w.double(), padding=pad, groups=groups)
    conv = native.NativeWinograd(w, pad, groups)
    y = conv(x)
    assert y.shape == reference.shape
    assert float((y.double() - reference).abs().max() / reference.abs().max()) < 2e-5
    torch.testing.assert_close(conv(x.contiguous(memory_format=torch.channels_last)), y, rtol=0, atol=0)
    for b, relu in [(bias, False), (bias, True), (None, True)]:
        expected = y + (0 if b is None else b.view(1, -1, 1, 1))
        torch.testing.assert_close(conv(x, b, relu), expected.relu() if relu else expected, rtol=0, atol=1e-6)
    x[0, 0, 0, 0] = float("nan")  # through ReLU a NaN stays NaN, as in Caffe
    y = conv(x, bias, relu=True)[0, :, 0, 0]
    assert y[:k // groups].isnan().all() and not y[k // groups:].isnan().any()  # the first group's


@needs_compiler
@pytest.mark.parametrize("blocks", [(6, 1), (6, 3), (12, 5), (18, 2), (54, 4)])
def test_compiled_winograd_in_any_blocks_and_splits_of_the_output_channels(blocks, monkeypatch):
    gen = torch.Generator().manual_seed(7)
    x, w = torch.randn((2, 16, 17, 22), generator=gen), torch.randn((72, 16, 3, 3), generator=gen) / 12
    bias = torch.randn(72, generator=gen)
    conv = native.NativeWinograd(w, (1, 1))
    monkeypatch.setattr(conv, "blocks", lambda tiles, threads: blocks)
    reference = F.conv2d(x.double(), w.double(), bias.double(), padding=1).relu()
    y = conv(x, bias, relu=True)
    assert float((y.double() - reference).abs().max() / reference.abs().max()) < 2e-5


def test_compiled_winograd_blocks_fit_the_image_and_the_threads():
    small, large = native.NativeWinograd(torch.zeros(64, 64, 3, 3), (1, 1)), native.NativeWinograd(
        torch.zeros(512, 512, 3, 3), (1, 1))
    assert small.blocks(56 * 56, 2) == (12, 1)    # many blocks: shared out evenly as they are
    assert small.blocks(5, 2) == (6, 2)           # one block: its output channels split
    assert small.blocks(5, 1) == (6, 1)
    assert large.blocks(7 * 7, 2) == (54, 2)      # 36 MB of transformed weights: read once per thread
    assert large.blocks(28 * 28, 2) == (54, 1)
    assert large.blocks(4, 4) == (6, 4)


@needs_compiler
def test_compiled_winograd_runs_on_any_number_of_threads():
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn((2, 24, 30, 26), generator=gen), torch.randn((32, 24, 3, 3), generator=gen)
    conv, threads = native.NativeWinograd(w, (1, 1)), torch.get_num_threads()
    try:
        outputs = []
        for n in (1, 3):
            torch.set_num_threads(n)
            outputs.append(conv(x))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@needs_compiler
def test_compiled_winograd_is_offered_only_where_it_fits():
    net = text_net(NNPACK.replace("dim: 5", "dim: 16") % (3, 3, 1, 1))
    assert native.fits(net.layer_by_name()["conv"])
    for channels, kernel in [(5, (3, 3)), (16, (3, 5))]:
        net = text_net(NNPACK.replace("dim: 5", f"dim: {channels}") % (*kernel, 1, 1))
        assert not native.fits(net.layer_by_name()["conv"])
    net = text_net(NNPACK.replace("dim: 5", "dim: 16").replace("num_output: 8", "num_output: 12") % (3, 3, 1, 1))
    assert not native.fits(net.layer_by_name()["conv"])  # output channels: not a multiple of 8
    grouped = NNPACK.replace("dim: 5", "dim: 32").replace("num_output: 8", "num_output: 16 group: %d")
    assert native.fits(text_net(grouped % (2, 3, 3, 1, 1)).layer_by_name()["conv"])
    assert not native.fits(text_net(grouped % (4, 3, 3, 1, 1)).layer_by_name()["conv"])  # 4 channels out a group


def test_settings_naming_the_compiled_winograd_where_it_is_not_offered_run_the_default(monkeypatch):
    """Settings cached where a compiler was (or for other channels) fall back to the default."""
    monkeypatch.setattr(native, "library", lambda: None)
    net = text_net(NNPACK.replace("dim: 5", "dim: 16") % (3, 3, 1, 1))
    deployed = DeployedNet(net, settings=Settings(False, (("conv", "native4"),)))
    x = torch.randn(2, 16, 13, 10)
    y = deployed(x=x)["y"]
    assert deployed.fused[0].algorithm == "onednn"
    torch.testing.assert_close(y, net.run({"x": x})[0]["y"], rtol=1e-5, atol=1e-5)


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """native.library() built anew, its cache in ``tmp_path``; as it was afterwards."""
    monkeypatch.setenv("PROTOCAFFE_CACHE", str(tmp_path))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    native.library.cache_clear()
    yield tmp_path
    native.library.cache_clear()


def test_without_a_compiler_the_compiled_winograd_is_not_offered(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_library / "no-such-compiler"))
    assert native.library() is None
    net = text_net(NNPACK.replace("dim: 5", "dim: 16") % (3, 3, 1, 1))
    deployed = DeployedNet(net, settings=Settings())
    assert "native4" not in deployed.fused[0].algorithms()
    assert "winograd4" in deployed.fused[0].algorithms()
    assert not list(fresh_library.rglob("*.so")) and not list(fresh_library.rglob("*.tmp"))


@needs_compiler
def test_the_compiled_winograd_is_built_once_per_machine(fresh_library, monkeypatch):
    builds = []
    build = native._compile
    monkeypatch.setattr(native, "_compile", lambda *args: builds.append(args) or build(*args))
    assert native.library() is not None
    built = list(fresh_library.glob("winograd_kernel-*.so"))
    assert len(builds) == 1 and len(built) == 1 and not list(fresh_library.glob("*.tmp"))
    native.library.cache_clear()  # as in a new process
    assert native.library() is not None
    assert len(builds) == 1 and list(fresh_library.glob("winograd_kernel-*.so")) == built


@needs_compiler
def test_the_compiled_winograd_is_built_apart_where_the_cache_cannot_be_written(fresh_library, monkeypatch):
    (fresh_library / "file").write_text("not a folder")
    monkeypatch.setenv("PROTOCAFFE_CACHE", str(fresh_library / "file"))
    assert native.library() is not None
    built = list((fresh_library / "tmp").rglob("winograd_kernel-*.so"))
    assert len(built) == 1 and built[0].parent.name.startswith("protocaffe-")
    assert oct(built[0].parent.stat().st_mode & 0o777) == "0o700"
    assert (fresh_library / "file").read_text() == "not a folder"


# ---- NNPACK ------------------------------------------------------------------------------------

NNPACK = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 5 dim: 13 dim: 10 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 8
        kernel_h: %d kernel_w: %d pad_h: %d pad_w: %d weight_filler { type: "gaussian" }
        bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" relu_param { negative_slope: 0.1 } }
"""


@pytest.mark.skipif(not torch._nnpack_available(), reason="this torch has no NNPACK for this CPU")
@pytest.mark.parametrize("kernel, pad", [((3, 3), (1, 1)), ((3, 3), (0, 2)), ((5, 5), (2, 2)), ((1, 3), (0, 1))])
def test_nnpack_convolution_against_float64(kernel, pad):
    net = text_net(NNPACK % (kernel + pad))
    x = torch.randn(2, 5, 13, 10, generator=torch.Generator().manual_seed(kernel[0]))
    deployed = DeployedNet(net, settings=Settings(True, (("conv", "nnpack"),)))
    assert deployed.fused[0].algorithms()[-1] == "nnpack"
    y = deployed(x=x)["y"]
    assert deployed.fused[0].algorithm == "nnpack"
    exact = exact64(net, {"x": x})["y"]
    assert y.shape == exact.shape and float(y.min()) < 0  # the leaky ReLU ran
    assert max_error({"y": y}, {"y": exact})["y"] < 4e-5


def test_nnpack_is_offered_for_stride_1_one_group_and_kernels_over_1x1_only():
    strided = text_net(NNPACK.replace("pad_w: %d", "pad_w: %d stride: 2") % (3, 3, 1, 1))
    grouped = text_net(NNPACK.replace("num_output: 8", "num_output: 10 group: 5") % (3, 3, 1, 1))
    pointwise = text_net(NNPACK % (1, 1, 0, 0))
    for net in (strided, grouped, pointwise):
        assert "nnpack" not in FusedConv(net.layer_by_name()["conv"]).algorithms()


# ---- InnerProduct by oneDNN ------------------------------------------------------------------

INNER = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "in2" type: "Input" top: "z" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 7 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 7 axis: 3 weight_filler { type: "gaussian" } } }
layer { name: "sum" type: "Eltwise" bottom: "y" bottom: "z" top: "s" }
layer { name: "relu" type: "ReLU" bottom: "s" top: "s" }
layer { name: "ip2" type: "InnerProduct" bottom: "s" top: "t"
        inner_product_param { num_output: 6 axis: %d transpose: %s
                              weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "tanh" type: "TanH" bottom: "t" top: "t" }
"""


@pytest.mark.parametrize("axis, transpose", [(1, "false"), (2, "true"), (3, "false")])
@pytest.mark.parametrize("algorithm", ["onednn", "torch", "blocks"])
def test_inner_products_with_sums_and_activations_against_float64(axis, transpose, algorithm, monkeypatch):
    monkeypatch.setattr(blocks, "parts", lambda: 3)  # 7 and 6 outputs: blocks padded with zero rows
    net = text_net(INNER % (axis, transpose))
    gen = torch.Generator().manual_seed(axis)
    inputs = {"x": torch.randn(2, 3, 4, 5, generator=gen), "z": torch.randn(2, 3, 4, 7, generator=gen)}
    deployed = DeployedNet(net, settings=every(net, False, algorithm))
    out = deployed(**inputs)
    assert fused_types(deployed)[2:] == [("InnerProduct", (), True, "ReLU"), ("InnerProduct", (), False, "TanH")]
    assert [m.algorithm for m in deployed.fused] == [algorithm] * 2
    exact = exact64(net, inputs)
    assert out["t"].shape == exact["t"].shape
    assert max_error(out, {"t": exact["t"]})["t"] < FLOAT32


# ---- onnxruntime as the engine ---------------------------------------------------------------

def golden_slim(prototxt="slim_caffenet_deploy.prototxt"):
    ref = np.load(NETS / "slim_caffenet.npz")
    net = netlib.build_net(str(NETS / prototxt), caffe.TEST, weights=str(NETS / "slim_caffenet.caffemodel"))
    return net, ref, torch.from_numpy(ref["blob_data"])


def test_golden_net_on_onnxruntime_gives_caffes_blobs():
    pytest.importorskip("onnxruntime")
    net, ref, data = golden_slim()
    deployed = DeployedNet(net, keep=net.blob_shapes, settings=Settings(engine="onnxruntime"))
    blobs = deployed(data=data)
    assert deployed._ort is not None and set(blobs) == set(net.blob_shapes)
    for blob, value in blobs.items():
        assert_close(value.numpy(), ref[f"blob_{blob}"], what=blob)


def test_onnxruntime_sees_new_weights_and_leaves_other_shapes_to_torch():
    pytest.importorskip("onnxruntime")
    net, ref, data = golden_slim()
    deployed = DeployedNet(net, settings=Settings(engine="onnxruntime"))
    first = deployed(data=data)["prob"]
    session = deployed._ort.session
    assert_close(first.numpy(), ref["blob_prob"])
    with torch.no_grad():
        net.layer_by_name()["fc8"].bias.add_(torch.arange(10.0))  # in place: the net is exported again
    again = deployed(data=data)["prob"]
    assert deployed._ort.session is not session
    with torch.no_grad():
        exact = net.run({"data": data})[0]["prob"]
    assert float((again - first).abs().max()) > 0.1
    assert_close(again.numpy(), exact.numpy(), rtol=1e-5, atol=1e-6)
    two = torch.cat([data, data.flip(3)])  # a batch of 2 against the net's 1: the torch plan
    session = deployed._ort.session
    out = deployed(data=two)["prob"]
    assert deployed._ort.session is session and out.shape[0] == 2
    assert_close(out[:1].numpy(), again.numpy(), rtol=1e-5, atol=1e-6)


def test_onnxruntime_is_fed_only_the_inputs_its_outputs_need():
    pytest.importorskip("onnxruntime")
    net = text_net(FOLDS[:FOLDS.index('layer { name: "bn"')])  # input x2 feeds nothing
    inputs = {"x": torch.randn(2, 4, 9, 9), "x2": torch.randn(2, 4, 8, 8)}
    out = DeployedNet(net, settings=Settings(engine="onnxruntime"))(**inputs)["c"]
    with torch.no_grad():
        assert_close(out.numpy(), net.run(inputs)[0]["c"].numpy(), rtol=1e-5, atol=1e-6)


def test_onnxruntime_is_measured_and_kept_only_where_faster(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    for faster, engines, expected in [("onnxruntime", "", "onnxruntime"), ("torch", "", "torch"),
                                      ("onnxruntime", "torch", "torch")]:
        monkeypatch.setenv("PROTOCAFFE_CACHE", str(tmp_path / f"{faster}-{engines}"))  # measured afresh
        monkeypatch.setenv("PROTOCAFFE_ENGINES", engines)
        monkeypatch.setattr(deploy_settings, "_timed", lambda fn, *args, faster=faster: 1.0 if (
            args[-1].engine == faster if isinstance(args[-1], Settings) else True) else 2.0)
        net, ref, data = golden_slim()
        deployed = DeployedNet(net)
        prob = deployed(data=data)["prob"]
        assert deployed.settings.engine == expected
        assert (deployed._ort is not None) == (expected == "onnxruntime")  # the losing session let go
        assert_close(prob.numpy(), ref["blob_prob"])
    monkeypatch.setenv("PROTOCAFFE_ENGINES", "torch,tensorrt")
    with pytest.raises(caffe.CaffeError, match="expected some of torch, onnxruntime, found tensorrt"):
        DeployedNet(golden_slim()[0])(data=data)


def test_a_net_without_an_onnx_form_stays_in_torch(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("PROTOCAFFE_CACHE", str(tmp_path))

    class Doubling(Layer):
        type = "TestDoubling"

        def top_shapes(self, bottom_shapes):
            return bottom_shapes

        def forward(self, x):
            return 2 * x

    monkeypatch.setitem(LAYERS, Doubling.type, Doubling)
    monkeypatch.setattr(deploy_settings, "_timed", lambda fn, *args: 1.0)
    net = text_net(FOLDS[:FOLDS.index('layer { name: "bn"')] +
                   'layer { name: "d" type: "TestDoubling" bottom: "c" top: "d" }')
    inputs = {"x": torch.randn(2, 4, 9, 9), "x2": torch.randn(2, 4, 8, 8)}
    deployed = DeployedNet(net)
    out = deployed(**inputs)["d"]
    assert deployed.settings.engine == "torch" and deployed._ort is None
    with torch.no_grad():
        assert_close(out.numpy(), net.run(inputs)[0]["d"].numpy(), rtol=1e-5, atol=1e-6)


# ---- the settings: measured once, then cached ------------------------------------------

def test_after_measuring_every_op_runs_by_the_algorithm_chosen(monkeypatch, tmp_path):
    """Each op was packed for each of its algorithms in turn while measured; the net then runs
    every op by the one chosen (here the defaults, made the fastest), not the one measured last."""
    monkeypatch.setenv("PROTOCAFFE_CACHE", str(tmp_path))
    monkeypatch.setattr(deploy_settings, "_timed",
                        lambda fn, *args: 1.0 if getattr(fn, "algorithm", "onednn") in ("onednn", "torch") else 2.0)
    net, inputs = folds_net()
    deployed = DeployedNet(net)
    deployed(**inputs)
    assert deployed.settings.algorithms == ()
    measured = [m for m in deployed.fused if isinstance(m, FusedConv) and len(m.algorithms()) > 1]
    assert measured and [m.algorithm for m in measured] == [m.algorithms()[0] for m in measured]


def test_an_algorithm_hopeless_at_its_warm_up_is_not_timed_further(monkeypatch):
    """Timed runs go to the default and to the algorithms whose warm-up came within HOPELESS
    times the fastest warm-up; the fastest of those is chosen."""
    ms = {"onednn": 10.0, "winograd2": 25.0, "winograd4": 15.0, "native4": 8.0}
    runs = []
    monkeypatch.setattr(FusedConv, "algorithms", lambda self: list(ms))
    monkeypatch.setattr(deploy_settings, "_timed", lambda fn, *args: runs.append(fn.algorithm) or ms[fn.algorithm])
    net = text_net(NNPACK.replace("dim: 5", "dim: 16") % (3, 3, 1, 1))
    deployed = DeployedNet(net, settings=Settings())
    chosen = deploy_settings.fastest_algorithms(deployed, deployed.sources({"x": torch.randn(2, 16, 13, 10)}), False)
    assert chosen == (("conv", "native4"),)
    assert runs.count("winograd2") == 1                     # 25 > 2 x 8: its warm-up only
    assert all(runs.count(a) > 1 for a in ("onednn", "winograd4", "native4"))
    ms["onednn"] = 100.0  # the default is timed whatever its warm-up
    runs.clear()
    deploy_settings.fastest_algorithms(deployed, deployed.sources({"x": torch.randn(2, 16, 13, 10)}), False)
    assert runs.count("onednn") > 1


def test_settings_are_measured_once_per_machine_and_net(monkeypatch, tmp_path):
    monkeypatch.setenv("PROTOCAFFE_CACHE", str(tmp_path))
    net, inputs = folds_net()
    first = DeployedNet(net)
    first(**inputs)
    table = (tmp_path / "deploy.json").read_text()
    assert machine.cpu_name().split(",")[0] in table
    monkeypatch.setattr(deploy_settings, "measure", lambda *a: pytest.fail("measured again"))
    monkeypatch.setattr(deploy_settings, "fastest_algorithms", lambda *a: pytest.fail("measured again"))
    again = DeployedNet(net)
    again(**inputs)
    assert again.settings == first.settings


# ---- pycaffe ----------------------------------------------------------------------------

@pytest.fixture
def prepacked(monkeypatch):
    """Deployed nets run channels-last, in oneDNN on weights in its layout (copies), unmeasured."""
    monkeypatch.setattr("protocaffe.deploy.plan.choose", lambda deployed, blobs: every(deployed.net, True, "onednn"))


def slim_pycaffe():
    return caffe.Net(str(NETS / "slim_caffenet_deploy.prototxt"), str(NETS / "slim_caffenet.caffemodel"),
                     caffe.TEST)


def test_pycaffe_forward_is_fast_and_shows_every_blob_on_request():
    ref = np.load(NETS / "slim_caffenet.npz")
    net = slim_pycaffe()
    out = net.forward(data=ref["blob_data"])
    assert net._fast_inputs is not None and not net._records  # the fast path ran
    assert_close(out["prob"], ref["blob_prob"])
    net.blobs["data"].data[...] = 0  # the inputs change; a blob read now is the last forward's
    assert_close(net.blobs["pool2"].data, ref["blob_pool2"], what="pool2")
    assert net._fast_inputs is None and net._records  # it ran layer by layer for that
    out = net.forward(data=ref["blob_data"])
    assert "pool2" in net._fast_keep
    assert_close(net.blobs["pool2"].data, ref["blob_pool2"], what="pool2 kept")
    assert net._fast_inputs is not None  # kept by the fast forward: no layer-by-layer run
    grads = net.backward(prob=np.ones_like(out["prob"]))
    exact = slim_pycaffe()
    exact.fast = False
    exact.forward(data=ref["blob_data"])
    assert_close(grads["data"], exact.backward(prob=np.ones_like(out["prob"]))["data"])


def test_pycaffe_weights_written_through_held_arrays_are_seen(prepacked):
    ref = np.load(NETS / "slim_caffenet.npz")
    net, exact = slim_pycaffe(), slim_pycaffe()
    exact.fast = False
    weight = net.params["conv2"][0].data  # held across forwards
    for scale in (1.0, -2.0, 0.5):
        weight[...] = ref["param_conv2_0"] * scale
        exact.params["conv2"][0].data[...] = ref["param_conv2_0"] * scale
        assert_close(net.forward(data=ref["blob_data"])["prob"], exact.forward(data=ref["blob_data"])["prob"])
    del weight
    net.params["conv1"][1].data[...] += 1  # written at once, the array dropped
    exact.params["conv1"][1].data[...] += 1
    assert_close(net.forward(data=ref["blob_data"])["prob"], exact.forward(data=ref["blob_data"])["prob"])


def test_pycaffe_callbacks_run_layer_by_layer():
    ref = np.load(NETS / "slim_caffenet.npz")
    net = slim_pycaffe()
    seen = []
    net.after_forward(seen.append)
    net.forward(data=ref["blob_data"])
    assert seen == list(range(1, len(net.layers))) and net._fast_inputs is None
