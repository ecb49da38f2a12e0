"""The forks' layer types exported to ONNX and run in onnxruntime against protocaffe, every blob
within 1e-4 relative (the nets of the forks' tests), and the ones refused named."""
import numpy as np
import pytest
import torch

from conftest import assert_close
from fork_nets import input_layer, layer
from protocaffe.errors import CaffeError
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2
from test_fork_mobile import mobilenet_v2_block, se_block, shufflenet_units
from test_fork_pspnet import pyramid_pooling

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from protocaffe.onnx_export import to_onnx  # noqa: E402


def _exported_equals_protocaffe(tmp_path, text, phase=caffe_pb2.TEST, prepare=None):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = build_net(path, phase=phase, seed=0)
    if prepare:
        prepare(net)
    feeds = {n: np.random.default_rng(0).standard_normal(net.blob_shapes[n]).astype(np.float32) * 3
             for n in net.input_names}
    with torch.no_grad():
        blobs = net(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    names = [b for b in net.blob_shapes if b not in net.input_names]
    model = to_onnx(net, outputs=names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, value in zip(names, session.run(names, feeds)):
        assert_close(value, blobs[name].numpy(), what=name)


def _statistics(net):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lay in net.layer_by_name().values():
            if lay.type == "BatchNorm":
                lay.variance.uniform_(0.5, 2, generator=g)
                lay.scale_factor.fill_(1)
            if lay.type == "BN" and not lay.segnet:
                lay.mean.uniform_(-1, 1, generator=g)
                lay.variance.uniform_(0.5, 2, generator=g)


@pytest.mark.parametrize("text", [shufflenet_units(), mobilenet_v2_block(), mobilenet_v2_block("DepthwiseConvolution"),
                                  se_block(), pyramid_pooling()], ids=["shufflenet", "mobilenet_v2",
                                                                       "mobilenet_v2_dw", "se", "pyramid"])
def test_the_forks_nets_export(tmp_path, text):
    _exported_equals_protocaffe(tmp_path, text, prepare=_statistics)


def test_relu6_slope_interp_crop_yolo_upsample_and_bn_export(tmp_path):
    text = input_layer("data", (2, 4, 7, 9))
    text += layer("r6", "ReLU6", ["data"], body="relu6_param { negative_slope: 0.1 }")
    text += layer("crop", "Interp", ["r6"], body="interp_param { height: 5 width: 7 pad_beg: -1 pad_end: -1 }")
    text += layer("shrink", "Interp", ["r6"], body="interp_param { shrink_factor: 2 zoom_factor: 3 pad_beg: -1 }")
    text += layer("one", "Interp", ["r6"], body="interp_param { height: 1 width: 5 }")
    text += layer("up", "Upsample", ["r6"], body="upsample_param { scale: 2 }")
    text += layer("segnet_bn", "BN", ["up"], body='bn_param { bn_mode: INFERENCE scale_filler { type: "gaussian" } '
                                                  'shift_filler { type: "gaussian" } }')
    text += layer("psp_bn", "BN", ["segnet_bn"], body='bn_param { frozen: false slope_filler { type: "gaussian" } '
                                                      'bias_filler { type: "gaussian" } eps: 0.001 }')
    _exported_equals_protocaffe(tmp_path, text, prepare=_statistics)


@pytest.mark.parametrize("body, message", [
    (layer("pool", "Pooling", ["data"], ["pool", "mask"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }") +
     layer("up", "Upsample", ["pool", "mask"], body="upsample_param { scale: 2 }"),
     r"layer 'pool' \(type Pooling\): its argmax mask top \(SegNet's\) has no faithful ONNX form here"),
    (layer("bn", "BN", ["data"], body="bn_param { bn_mode: LEARN }"),
     r"layer 'bn' \(type BN\): normalizes with each batch's own statistics"),
])
def test_refused_types_are_named(tmp_path, body, message):
    path = tmp_path / "net.prototxt"
    path.write_text(input_layer("data", (1, 2, 4, 4)) + body)
    with pytest.raises(CaffeError, match=message):
        to_onnx(build_net(path))

