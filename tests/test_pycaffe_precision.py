"""pycaffe in low precision (issue 21): caffe.set_precision, Net(precision=...), and the
caller's own torch.autocast. The slim CaffeNet against Caffe's golden blobs and gradients
(fp32, so the low precisions within bf16's rounding); blobs read as float32 arrays."""
import numpy as np
import pytest
import torch

import protocaffe as caffe
from conftest import GOLDEN, assert_close
from protocaffe import hardware
from protocaffe.pycaffe import mode

NETS = GOLDEN / "nets"
REF = np.load(NETS / "slim_caffenet.npz")
BLOBS = ["conv1", "pool1", "norm1", "conv2", "conv5", "fc6", "fc8", "prob"]


def slim(**options):
    return caffe.Net(str(NETS / "slim_caffenet_deploy.prototxt"), str(NETS / "slim_caffenet.caffemodel"),
                     caffe.TEST, **options)


def relative_error(actual, expected):
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.fixture
def precision_reset():
    yield
    mode._MODE["precision"] = None


def whole_graph_gradients(net, autocast):
    """The data's and the weights' gradients of the same module by one autograd pass over the
    whole graph under ``autocast``, seeded at fc8 as the pycaffe backward is."""
    module = net.module
    for p in module.parameters():
        p.grad = None
    data = torch.from_numpy(REF["blob_data"]).requires_grad_(True)
    first = {}
    with autocast:
        module.run({"data": data}, first)
    first["fc8"].backward(torch.from_numpy(REF["gparam_fc8_1"]).reshape(first["fc8"].shape).to(first["fc8"].dtype))
    return data.grad.numpy(), {name: layer.blobs[0].grad.numpy() for name, layer in module.layer_by_name().items()
                               if layer.blobs}


def check_low_precision_forward_backward(net, dtype, bound, autocast):
    """Forward and backward of the slim CaffeNet, run under ``autocast``: each blob computed in
    ``dtype`` reads as a float32 array within ``bound`` (relative L2 error) of Caffe's fp32
    values; the gradients are those of one autograd pass over the same module in the same
    precision, bit for bit (the layer-by-layer backward adds nothing), and at the top
    within ``bound`` of Caffe's (further down the rounding compounds: max pooling and ReLU
    route the gradient by the rounded forward values)."""
    with autocast:
        out = net.forward(data=REF["blob_data"])
    assert out["prob"].dtype == np.float32 and out["prob"].argmax() == REF["blob_prob"].argmax()
    assert net.blobs["conv1"]._data.dtype == dtype  # the convolutions did run in the low precision
    for name in BLOBS:
        data = net.blobs[name].data
        assert data.dtype == np.float32, name
        assert relative_error(data, REF[f"blob_{name}"]) < bound, name
    net.blobs["fc8"].diff[...] = REF["gparam_fc8_1"].reshape(1, -1)
    diff = net.backward(start="fc8")["data"].copy()
    weights = {name: blobs[0].diff.copy() for name, blobs in net.params.items()}
    assert diff.dtype == np.float32 and all(w.dtype == np.float32 for w in weights.values())
    for name in ("fc6", "fc7", "fc8"):
        assert relative_error(weights[name], REF[f"gparam_{name}_0"]) < bound, name
    whole_diff, whole_weights = whole_graph_gradients(net, autocast)
    np.testing.assert_array_equal(diff, whole_diff)
    for name, grad in whole_weights.items():
        np.testing.assert_array_equal(weights[name], grad, err_msg=name)


def test_blob_data_under_the_callers_autocast_reads_as_float32():
    """The issue's failure: under torch.autocast(bfloat16), reading a blob's .data raised
    'Got unsupported ScalarType BFloat16'."""
    check_low_precision_forward_backward(slim(), torch.bfloat16, 0.02, torch.autocast("cpu", dtype=torch.bfloat16))


@pytest.mark.parametrize("precision, dtype, bound", [("bf16", torch.bfloat16, 0.02), ("fp16", torch.float16, 0.002)])
def test_net_precision_argument(precision, dtype, bound):
    net = slim(precision=precision)
    check_low_precision_forward_backward(net, dtype, bound, net.speed.autocast(net.device))


def test_set_precision_applies_to_the_nets_made_next(precision_reset):
    caffe.set_precision("bf16")
    net = slim()
    assert net.speed.precision == "bf16"
    check_low_precision_forward_backward(net, torch.bfloat16, 0.02, net.speed.autocast(net.device))
    assert slim(precision="fp32").speed.precision == "fp32"  # the argument wins


def test_writes_to_a_low_precision_blob_reach_the_net():
    """A caller's write into a bf16 blob's float32 array is what the layers above read."""
    net = slim(precision="bf16")
    net.forward(data=REF["blob_data"])
    net.blobs["fc8"].data[...] = REF["blob_fc8"]
    prob = net.forward(start="prob")["prob"]
    rounded = torch.from_numpy(REF["blob_fc8"]).bfloat16().float()
    assert_close(prob, torch.softmax(rounded, 1).numpy(), what="prob from the written fc8")


def test_auto_follows_the_hardware(precision_reset, monkeypatch):
    """auto is fp32 on this CPU when it lacks native bf16: the same values, bit for bit, as fp32."""
    native_bf16 = hardware.cpu_precisions(hardware.cpu().flags)["bf16"]
    caffe.set_precision("auto")
    net = slim()
    assert net.speed.precision == ("bf16" if native_bf16 else "fp32")
    if not native_bf16:
        out = net.forward(data=REF["blob_data"])
        exact = slim(precision="fp32").forward(data=REF["blob_data"])
        np.testing.assert_array_equal(out["prob"], exact["prob"])
    monkeypatch.setattr(hardware, "native_precisions", lambda device: {"fp32": True, "bf16": True, "fp16": False})
    assert slim().speed.precision == "bf16"


def test_set_precision_rejects_unknown_names():
    with pytest.raises(caffe.CaffeError, match="precision must be one of fp32, bf16, fp16, auto; found 'int8'"):
        caffe.set_precision("int8")


def test_solver_takes_set_precision(golden_cwd, tmp_path, precision_reset):
    """set_precision overrides the solver's precision field, as set_mode_* its solver_mode."""
    (tmp_path / "solver.prototxt").write_text('net: "solver/mini_caffenet.prototxt" base_lr: 0.01 '
                                              'lr_policy: "fixed" max_iter: 1 display: 0 '
                                              'snapshot_after_train: false precision: "fp32"')
    assert caffe.get_solver(str(tmp_path / "solver.prototxt")).speed.precision == "fp32"
    caffe.set_precision("bf16")
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    assert solver.speed.precision == "bf16" and solver.net.speed is solver.speed
