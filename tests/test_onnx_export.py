"""ONNX export, run in onnxruntime against BVLC Caffe's golden outputs and protocaffe's own.

Every golden net and a selection of golden layer cases (the odd pooling sizes, LRN, grouped
and dilated convolution, deconvolution, BatchNorm, Scale, Eltwise, Slice, Crop, Softmax axis,
InnerProduct axis/transpose, ...), the model zoo's AlexNet and CaffeNet, and small nets in
the shapes users bring (tests/data/onnx: GoogLeNet inception, ResNet bottleneck, SqueezeNet
fire, MobileNet depthwise, VGG + FCN upsampling) agree within 1e-4 relative.
"""
import math
import sys

import numpy as np
import pytest
import torch

from conftest import DATA, GOLDEN, assert_close
import protocaffe
from protocaffe.cli import main
from protocaffe.errors import CaffeError
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from protocaffe.onnx_export import to_onnx  # noqa: E402

NETS = GOLDEN / "nets"
TOPOLOGIES = sorted(p.stem for p in (DATA / "onnx").glob("*.prototxt"))
LAYER_CASES = [
    "absval", "batchnorm_global", "bias", "bnll", "concat_axis0", "concat_c", "conv_1x1",
    "conv_dilated", "conv_k11_s4", "conv_k3_p1_group2", "conv_k5_p2_group2", "conv_rect_nobias",
    "crop", "deconv_group2", "deconv_s2", "dropout_test_phase", "eltwise_max", "eltwise_prod",
    "eltwise_sum_coeff", "elu", "exp_base2", "flatten", "ip_axis2", "ip_from_4d", "ip_transpose",
    "log", "lrn_across_alexnet", "lrn_across_k2_strong", "lrn_across_size3", "lrn_within", "mvn",
    "pool_ave_k3_s2_ceil", "pool_ave_k3_s2_pad1", "pool_global_ave", "pool_global_max",
    "pool_max_k2_s2_pad1", "pool_max_k3_s2_even", "pool_max_k3_s2_odd", "pool_rect", "power",
    "prelu", "prelu_shared", "relu", "relu_leaky", "reshape", "scale_bias", "scale_two_bottoms",
    "sigmoid", "slice_points", "softmax", "softmax_axis2", "tanh", "threshold", "tile",
]
LAYER2_CASES = ["eltwise_max_ties", "pool_ave_k3_s1_p1", "pool_ave_pad_w_only", "pool_max_k3_s1_p1",
                "pool_max_pad_h_only"]


def run_onnx(model, feeds):
    """{output name: array} from onnxruntime on the CPU."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_protocaffe(net, feeds):
    with torch.no_grad():
        blobs = net(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in blobs.items()}


def hidden_blobs(net):
    """Every blob but the inputs: exported as outputs to compare layer by layer."""
    return [b for b in net.blob_shapes if b not in net.input_names]


def assert_outputs_match(got, expected, what):
    for name, value in got.items():
        assert_close(value, expected[name], what=f"{what}: {name}")


def randomize(net, seed=0):
    """Weights with He's scale (so activations neither vanish nor explode), biases and Scale
    blobs around their neutral values, BatchNorm statistics with a scale factor of 7.5."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layer_by_name().values():
            for name in layer.blob_names:
                t = getattr(layer, name)
                if layer.type == "BatchNorm":
                    value = {"mean": torch.randn(t.shape, generator=g),
                             "variance": torch.rand(t.shape, generator=g) + 0.5,
                             "scale_factor": torch.ones(t.shape)}[name] * 7.5
                elif layer.type == "Scale" and name == "weight":
                    value = torch.rand(t.shape, generator=g) + 0.5
                elif t.dim() > 1:
                    value = torch.randn(t.shape, generator=g) * math.sqrt(2 * t.shape[0] / t.numel())
                else:
                    value = torch.randn(t.shape, generator=g) * 0.1
                t.copy_(value)
    return net


def random_inputs(net, seed=0, batch=None):
    rng = np.random.RandomState(seed)
    shapes = {n: net.blob_shapes[n] for n in net.input_names}
    return {n: rng.randn(*((batch,) + s[1:] if batch else s)).astype(np.float32) for n, s in shapes.items()}


def topology(name):
    """A net of tests/data/onnx with random weights."""
    return randomize(build_net(str(DATA / "onnx" / f"{name}.prototxt")))


# ---- golden nets and layers ---------------------------------------------------------

@pytest.mark.parametrize("prototxt, weights, npz", [
    ("slim_alexnet_deploy.prototxt", "slim_alexnet.caffemodel", "slim_alexnet.npz"),
    ("slim_caffenet_deploy.prototxt", "slim_caffenet.caffemodel", "slim_caffenet.npz"),
    ("slim_caffenet_v1.prototxt", "slim_caffenet_v1.caffemodel", "slim_caffenet.npz"),
])
def test_golden_net_every_blob(prototxt, weights, npz):
    net = build_net(str(NETS / prototxt), weights=str(NETS / weights))
    golden = np.load(NETS / npz)
    feeds = {"data": golden["blob_data"]}
    got = run_onnx(to_onnx(net, outputs=hidden_blobs(net)), feeds)
    assert set(got) == {k[5:] for k in golden.files if k.startswith("blob_")} - {"data"}
    assert_outputs_match(got, {k: golden[f"blob_{k}"] for k in got}, f"{prototxt} vs Caffe")
    assert_outputs_match(got, run_protocaffe(net, feeds), f"{prototxt} vs protocaffe")


def test_unchecked_model_is_the_checked_graph_and_gives_caffes_blobs(monkeypatch):
    """checked=False (the deployment engine's export, handed straight to onnxruntime) leaves out
    onnx's shape inference and checker only."""
    net = build_net(str(NETS / "slim_caffenet_deploy.prototxt"), weights=str(NETS / "slim_caffenet.caffemodel"))
    checked = to_onnx(net, outputs=hidden_blobs(net))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda *a, **k: pytest.fail("shapes inferred"))
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: pytest.fail("model checked"))
    unchecked = to_onnx(net, outputs=hidden_blobs(net), checked=False)
    assert list(unchecked.graph.node) == list(checked.graph.node)
    assert list(unchecked.graph.initializer) == list(checked.graph.initializer)
    assert list(unchecked.graph.output) == list(checked.graph.output)
    golden = np.load(NETS / "slim_caffenet.npz")
    got = run_onnx(unchecked, {"data": golden["blob_data"]})
    assert_outputs_match(got, {k: golden[f"blob_{k}"] for k in got}, "unchecked export vs Caffe")


def _golden_case(root, case, **options):
    folder = GOLDEN / root / case
    io_ = np.load(folder / "io.npz")
    net = build_net(str(folder / "net.prototxt"), weights=str(folder / "weights.caffemodel"))
    feeds = {k[3:]: io_[k] for k in io_.files if k.startswith("in_")}
    got = run_onnx(to_onnx(net, **options), feeds)
    expected = {k[4:]: io_[k] for k in io_.files if k.startswith("out_")}
    assert set(got) == set(expected)
    assert_outputs_match(got, expected, f"{case} vs Caffe")
    return net, feeds, got


@pytest.mark.parametrize("case", LAYER_CASES)
def test_golden_layer(case):
    net, feeds, got = _golden_case("layers", case)
    assert_outputs_match(got, run_protocaffe(net, feeds), f"{case} vs protocaffe")


@pytest.mark.parametrize("case", LAYER2_CASES)
def test_golden_layer2(case):
    """GoogLeNet's 3x3/s1/p1 pooling and one-axis padding, against Caffe's outputs."""
    _golden_case("layers2", case)


@pytest.mark.parametrize("case", ["slice_points", "softmax_axis2", "scale_two_bottoms", "crop",
                                  "pool_ave_k3_s2_ceil", "lrn_within"])
def test_oldest_opset(case):
    _golden_case("layers", case, opset=13)


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_mvn_settings_with_dynamic_batch(tmp_path, across, normalize):
    path = tmp_path / "net.prototxt"
    path.write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n'
        f'layer {{ name: "m" type: "MVN" bottom: "x" top: "y" mvn_param {{ eps: 0.01 '
        f'across_channels: {str(across).lower()} normalize_variance: {str(normalize).lower()} }} }}\n')
    net = build_net(str(path))
    model = to_onnx(net, dynamic_batch=True)
    for batch in (2, 3):
        feeds = random_inputs(net, seed=batch, batch=batch)
        assert_outputs_match(run_onnx(model, feeds), run_protocaffe(net, feeds), "MVN")


def test_split_tops_and_in_place_layers_keep_caffe_blob_names(tmp_path):
    """Two outputs holding one value, an input that is also an output, a blob rewritten in place."""
    path = tmp_path / "net.prototxt"
    path.write_text(
        'layer { name: "x" type: "Input" top: "x" top: "z" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "s" type: "Split" bottom: "x" top: "a" top: "b" }\n'
        'layer { name: "p" type: "Power" bottom: "a" top: "a" power_param { scale: 2 shift: 1 power: 2 } }\n'
        'layer { name: "t" type: "Split" bottom: "a" top: "c" top: "d" }\n')
    net = build_net(str(path))
    model = to_onnx(net)
    assert [o.name for o in model.graph.output] == ["b", "c", "d", "z"]
    feeds = random_inputs(net)
    got = run_onnx(model, feeds)
    assert_close(got["b"], feeds["x"])
    assert_close(got["c"], (2 * feeds["x"] + 1) ** 2)
    assert_outputs_match(got, run_protocaffe(net, feeds), "split")


# ---- nets users bring ---------------------------------------------------------------

@pytest.mark.parametrize("name", TOPOLOGIES)
def test_topology_every_blob(name):
    net = topology(name)
    feeds = random_inputs(net)
    got = run_onnx(to_onnx(net, outputs=hidden_blobs(net)), feeds)
    expected = run_protocaffe(net, feeds)
    assert_outputs_match(got, expected, name)
    assert expected["prob"].max() > 2 / expected["prob"].shape[1], "a near-uniform softmax checks little"


@pytest.mark.parametrize("zoo", ["bvlc_alexnet", "bvlc_reference_caffenet"])
def test_model_zoo_deploy(zoo):
    """The prototxt's own fillers stand in for trained weights; every blob is compared."""
    net = build_net(str(DATA.parent.parent / "models" / zoo / "deploy.prototxt"), seed=0)
    feeds = random_inputs(net)
    got = run_onnx(to_onnx(net, outputs=hidden_blobs(net)), feeds)
    assert_outputs_match(got, run_protocaffe(net, feeds), zoo)


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_dynamic_batch_two_sizes(name):
    net = topology(name)
    model = to_onnx(net, dynamic_batch=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        feeds = random_inputs(net, seed=batch, batch=batch)
        got = run_onnx(model, feeds)
        assert got["prob"].shape[0] == batch
        assert_outputs_match(got, run_protocaffe(net, feeds), f"batch {batch}")


def test_fp16_weights_and_arithmetic():
    net = build_net(str(NETS / "slim_alexnet_deploy.prototxt"), weights=str(NETS / "slim_alexnet.caffemodel"))
    golden = np.load(NETS / "slim_alexnet.npz")
    model = to_onnx(net, precision="fp16")
    fp16 = onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == fp16
    assert {t.data_type for t in model.graph.initializer if t.name.endswith("weight")} == {fp16}
    got = run_onnx(model, {"data": golden["blob_data"].astype(np.float16)})["prob"]
    assert got.dtype == np.float16
    assert_close(got, golden["blob_prob"], rtol=1e-2, atol=1e-3, what="fp16 prob")


def test_fp16_every_blob_of_a_resnet_block():
    """BatchNorm, Scale, the AVE correction map and Eltwise coefficients in float16."""
    net = topology("resnet_bottleneck")
    feeds = random_inputs(net)
    got = run_onnx(to_onnx(net, precision="fp16", outputs=hidden_blobs(net)),
                   {k: v.astype(np.float16) for k, v in feeds.items()})
    expected = run_protocaffe(net, feeds)
    for name, value in got.items():
        assert_close(value, expected[name], rtol=1e-2, atol=5e-3, what=f"fp16 {name}")


def test_pycaffe_net_exports(tmp_path):
    net = protocaffe.Net(str(NETS / "slim_alexnet_deploy.prototxt"), str(NETS / "slim_alexnet.caffemodel"),
                         protocaffe.TEST)
    model = protocaffe.export_onnx(net, tmp_path / "net.onnx")
    golden = np.load(NETS / "slim_alexnet.npz")
    got = run_onnx(onnx.load(str(tmp_path / "net.onnx")), {"data": golden["blob_data"]})
    assert [o.name for o in model.graph.output] == ["prob"]
    assert_close(got["prob"], golden["blob_prob"])


# ---- what cannot be exported ----------------------------------------------------------

@pytest.mark.parametrize("case, message", [
    ("argmax_axis", "layer 'test' (type ArgMax): has no faithful ONNX form"),
    ("batchnorm_train", "layer 'test' (type BatchNorm): normalizes with each batch's own statistics"),
])
def test_unexportable_layer_is_named(case, message):
    folder = GOLDEN / "layers" / case
    net = build_net(str(folder / "net.prototxt"), caffe_pb2.TRAIN if "train" in case else caffe_pb2.TEST)
    with pytest.raises(CaffeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_onnx(net)


def test_stochastic_pooling_is_refused(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
        'layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
        'pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }\n')
    with pytest.raises(CaffeError, match=r"layer 'p' \(type Pooling\): STOCHASTIC pooling"):
        to_onnx(build_net(str(path)))


def test_train_phase_dropout_is_refused():
    net = build_net(str(NETS / "slim_alexnet_deploy.prototxt"), caffe_pb2.TRAIN)
    with pytest.raises(CaffeError, match=r"layer 'drop6' \(type Dropout\): drops units at random"):
        to_onnx(net)


def test_dynamic_batch_refuses_a_reshape_of_the_batch_axis(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 6 } } }\n'
                    'layer { name: "r" type: "Reshape" bottom: "x" top: "y" '
                    'reshape_param { shape { dim: 4 dim: 3 } } }\n')
    net = build_net(str(path))
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert_close(run_onnx(to_onnx(net), {"x": x})["y"], x.reshape(4, 3))
    with pytest.raises(CaffeError, match=r"layer 'r' \(type Reshape\): it reshapes the batch axis"):
        to_onnx(net, dynamic_batch=True)


def test_missing_onnx_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    for name in [m for m in sys.modules if m.startswith("protocaffe.onnx_export")]:
        monkeypatch.delitem(sys.modules, name)
    one_line = r"^ONNX export needs the onnx package: pip install -e '\.\[onnx\]'$"
    with pytest.raises(CaffeError, match=one_line):
        protocaffe.export_onnx(None, "unused.onnx")


# ---- the command -------------------------------------------------------------------------

def test_cli_writes_a_checked_file(tmp_path, capsys):
    out = tmp_path / "net.onnx"
    rc = main(["export_onnx", "--model", str(NETS / "slim_caffenet_deploy.prototxt"),
               "--weights", str(NETS / "slim_caffenet.caffemodel"), "--output", str(out),
               "--dynamic_batch", "--opset", "18"])
    assert rc == 0
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 18
    assert [i.name for i in model.graph.input] == ["data"]
    assert [o.name for o in model.graph.output] == ["prob"]
    golden = np.load(NETS / "slim_caffenet.npz")
    x = np.concatenate([golden["blob_data"]] * 2)
    assert_close(run_onnx(model, {"data": x})["prob"], np.concatenate([golden["blob_prob"]] * 2))


def test_cli_error_is_one_line(tmp_path, capsys):
    folder = GOLDEN / "layers" / "argmax_axis"
    rc = main(["export_onnx", "--model", str(folder / "net.prototxt"), "--output", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("protocaffe export_onnx: error: layer 'test' (type ArgMax)")
    assert not (tmp_path / "x.onnx").exists()


def test_a_convolution_window_overhanging_its_input_exports_as_caffe_computes_it():
    """tests/data/caffe_diff's case: the ONNX graph pads the end by the overhang; its output
    is the values a real `caffe test` logged."""
    import h5py
    import re
    folder = DATA / "caffe_diff" / "conv_window_overhangs_by_less_than_a_stride"
    x = h5py.File(folder / "in.h5")["x"][()]
    text = re.sub(r'layer \{ name: "in" type: "HDF5Data".*?\}\s*\}\n',
                  'layer { name: "in" type: "Input" top: "x" input_param { shape { '
                  + " ".join(f"dim: {d}" for d in x.shape) + " } } }\n", (folder / "net.prototxt").read_text())
    param = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse(text, param)
    assert param.layer[0].type == "Input"
    net = build_net(param, caffe_pb2.TEST, weights=str(folder / "w.caffemodel"))
    got = run_onnx(to_onnx(net), {"x": x})["out"]
    caffe = [float(v) for v in re.findall(r"Batch 0, out = (\S+)", (folder / "caffe_test.log").read_text())]
    np.testing.assert_allclose(got.ravel(), caffe, rtol=2e-5, atol=1e-5)
