"""What Caffe refuses at setup, protocaffe refuses at build with one CaffeError naming the
layer and the value (conditions from Caffe's LayerSetUp CHECKs); a bad class label is a
CaffeError naming the loss layer, the label and the class count, not an index error."""
import pytest
import torch

from conftest import HAS_CUDA
from protocaffe import net as netlib
from protocaffe.layer_types import loss as loss_layers
from protocaffe.errors import CaffeError
from protocaffe.fileio import parse_text
from protocaffe.proto import caffe_pb2


def one_layer_net(shape, layer):
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f"""
    layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}
    layer {{ name: "bad" bottom: "x" {layer} }}
    """
    return netlib.build_net(parse_text(text, caffe_pb2.NetParameter), caffe_pb2.TEST, seed=1)


def assert_refused(shape, layer, *found):
    with pytest.raises(CaffeError) as error:
        one_layer_net(shape, layer)
    message = str(error.value)
    assert message.startswith("layer 'bad' (type ") and "\n" not in message, message
    for part in found:
        assert part in message, message


CONV = 'type: "Convolution" top: "y" convolution_param {{ num_output: 2 {} }}'


@pytest.mark.parametrize("param, found", [
    ("kernel_size: 3 kernel_size: 3 kernel_size: 3", "kernel_size must be given once or once per spatial axis (2), found 3 values [3, 3, 3]"),
    ("kernel_size: 3 stride: 1 stride: 2 stride: 1", "stride must be given once or once per spatial axis (2), found 3 values [1, 2, 1]"),
    ("kernel_size: 3 pad: 1 pad: 1 pad: 1", "pad must be given once or once per spatial axis (2), found 3 values"),
    ("kernel_size: 3 dilation: 1 dilation: 1 dilation: 2", "dilation must be given once or once per spatial axis (2), found 3 values"),
    ("pad: 1", "kernel_size must be given once or once per spatial axis (2), found 0 values"),
    ("kernel_size: 0", "kernel size must be positive, found (0, 0)"),
    ("kernel_size: 3 kernel_h: 3 kernel_w: 3", "give kernel_size or kernel_h/kernel_w, not both"),
    ("kernel_size: 3 stride: 0", "stride must be positive, found (0, 0)"),
    ("kernel_size: 7", "kernel (7, 7) (dilation (1, 1), pad (0, 0), stride (1, 1)) does not fit the input size (5, 6): output size (-1, 0)"),
    ("kernel_size: 3 dilation: 3", "kernel (3, 3) (dilation (3, 3)"),
])
def test_convolution_refuses_what_caffe_refuses(param, found):
    assert_refused((1, 1, 5, 6), CONV.format(param), "(type Convolution)", found)


def test_convolution_with_a_window_that_fits_its_padding_builds():
    net = one_layer_net((1, 1, 5, 6), CONV.format("kernel_size: 7 pad: 1"))
    assert net.blob_shapes["y"] == (1, 2, 1, 2)
    assert tuple(net(x=torch.zeros(1, 1, 5, 6))["y"].shape) == (1, 2, 1, 2)


def test_concat_and_slice_refuse_a_legacy_dim_together_with_axis():
    assert_refused((2, 4), 'type: "Concat" top: "y" concat_param { axis: 1 concat_dim: 1 }',
                   "(type Concat)", "give axis or concat_dim, not both; found axis: 1 and concat_dim: 1")
    assert_refused((2, 4), 'type: "Slice" top: "y" top: "z" slice_param { axis: 0 slice_dim: 1 }',
                   "(type Slice)", "give axis or slice_dim, not both; found axis: 0 and slice_dim: 1")


def loss_net(layer_type, extra=""):
    """x (3, 4), label (3,) and, for InfogainLoss, H (4, 4) as a third bottom."""
    infogain = layer_type == "InfogainLoss"
    text = f"""
    layer {{ name: "in" type: "Input" top: "x" top: "label" {'top: "H"' if infogain else ""}
             input_param {{ shape {{ dim: 3 dim: 4 }} shape {{ dim: 3 }}
                            {"shape { dim: 4 dim: 4 }" if infogain else ""} }} }}
    layer {{ name: "judge" type: "{layer_type}" bottom: "x" bottom: "label"
             {'bottom: "H"' if infogain else ""} top: "out" {extra} }}
    """
    return netlib.build_net(parse_text(text, caffe_pb2.NetParameter), caffe_pb2.TEST, seed=1)


@pytest.mark.parametrize("layer_type", ["SoftmaxWithLoss", "Accuracy", "InfogainLoss", "HingeLoss",
                                        "MultinomialLogisticLoss"])
@pytest.mark.parametrize("bad", [4.0, -1.0])
def test_a_label_outside_the_classes_names_the_layer_value_and_class_count(layer_type, bad):
    net = loss_net(layer_type)
    inputs = {"x": torch.rand(3, 4), "label": torch.tensor([0.0, bad, 3.0])}
    if layer_type == "InfogainLoss":
        inputs["H"] = torch.eye(4)
    with pytest.raises(CaffeError) as error:
        net(**inputs)
    assert str(error.value) == (f"layer 'judge' (type {layer_type}): label {int(bad)} is outside "
                                f"[0, 4): the prediction has 4 classes")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_a_bad_label_on_cuda_is_a_caffe_error_under_debug(monkeypatch):
    """On a GPU the label check costs a device-to-host sync per batch: it runs under --debug
    (CHECK_DEVICE_LABELS), which turns the device-side assert into this CaffeError."""
    monkeypatch.setattr(loss_layers, "CHECK_DEVICE_LABELS", True)
    net = loss_net("SoftmaxWithLoss").to("cuda")
    with pytest.raises(CaffeError, match="label 7 is outside"):
        net(x=torch.rand(3, 4, device="cuda"), label=torch.tensor([0.0, 7.0, 3.0], device="cuda"))
    loss = net(x=torch.zeros(3, 4, device="cuda"), label=torch.tensor([0.0, 1.0, 3.0], device="cuda"))
    assert loss["out"].item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-6)


def test_an_ignored_label_may_lie_outside_the_classes():
    net = loss_net("SoftmaxWithLoss", "loss_param { ignore_label: 255 }")
    x = torch.zeros(3, 4)
    loss = net(x=x, label=torch.tensor([0.0, 255.0, 3.0]))["out"]
    assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-6)


# ---- found by tools/diff_caffe.py against a real Caffe (both refuse; protocaffe used to crash) ----

def test_reshape_copying_an_axis_the_bottom_lacks_is_refused():
    assert_refused((2, 3, 4, 5), 'type: "Reshape" top: "y" reshape_param { shape { dim: 2 dim: 0 } axis: 3 num_axes: 0 }',
                   "shape dim 1 is 0", "bottom (2, 3, 4, 5) has no such axis")


def test_flatten_with_end_axis_before_axis_minus_one_is_refused():
    assert_refused((2, 3, 4, 5), 'type: "Flatten" top: "y" flatten_param { axis: 3 end_axis: 1 }',
                   "end_axis (1, axis 1) comes before axis (3, axis 3)")
