"""Helpers for the forks' tests: small real-world-shaped nets as prototxt text, random weights,
and the same net run by OpenCV 4's dnn (cv2.dnn.readNetFromCaffe: the layer parameters from the
prototxt text, the blobs from the .caffemodel)."""
import subprocess
import sys

import numpy as np
import torch

from protocaffe import fileio, schema
from protocaffe.dialects.wire import LENGTH, _encode_varint
from protocaffe.layer_types import LAYERS, BuildContext
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2


def make(text, bottom_shapes, phase=caffe_pb2.TEST):
    """One layer from its prototxt text (fork fields by bare name), its fillers seeded."""
    lp = schema.parse_text(text, caffe_pb2.LayerParameter)
    ctx = BuildContext(phase=phase, generator=torch.Generator().manual_seed(0))
    return LAYERS[lp.type](lp, bottom_shapes, ctx)


def length_field(number, payload):
    """A length-delimited field on the wire: how a fork's binary file holds a sub-message."""
    return _encode_varint(number << 3 | LENGTH) + _encode_varint(len(payload)) + payload


def layer(name, type_, bottoms, tops=None, body=""):
    """One layer's prototxt text."""
    tops = [name] if tops is None else tops
    lines = [f'name: "{name}"', f'type: "{type_}"'] + [f'bottom: "{b}"' for b in bottoms] + \
        [f'top: "{t}"' for t in tops] + ([body] if body else [])
    return "layer {\n  " + "\n  ".join(lines) + "\n}\n"


def input_layer(name, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return layer(name, "Input", [], body=f"input_param {{ shape {{ {dims} }} }}")


def conv(name, bottom, num_output, kernel, stride=1, pad=0, group=1, bias=True, type_="Convolution"):
    std = (2.0 / (kernel * kernel * num_output / group)) ** 0.5
    body = (f"convolution_param {{ num_output: {num_output} kernel_size: {kernel} stride: {stride} pad: {pad} "
            f"group: {group} bias_term: {str(bias).lower()} weight_filler {{ type: \"gaussian\" std: {std:.4f} }} "
            f"bias_filler {{ type: \"gaussian\" std: 0.1 }} }}")
    return layer(name, type_, [bottom], body=body)


def bn_scale_relu(name, bottom, top=None, relu=True, gamma=(0.8, 1.2)):
    """BVLC's BatchNorm + Scale (+ ReLU), as DenseNet-Caffe and ShuffleNet write them: BatchNorm
    from ``bottom`` to ``top`` (in place without one), the rest in place on ``top``; Scale's
    factors uniform in ``gamma``."""
    top = top or bottom
    text = layer(f"{name}/bn", "BatchNorm", [bottom], [top])
    text += layer(f"{name}/scale", "Scale", [top], [top],
                  f'scale_param {{ bias_term: true filler {{ type: "uniform" min: {gamma[0]} max: {gamma[1]} }} '
                  'bias_filler { type: "gaussian" std: 0.1 } }')
    if relu:
        text += layer(f"{name}/relu", "ReLU", [top], [top])
    return text


def calibrated_net(path, inputs, seed=0):
    """The net at ``path`` in TEST with random weights (its fillers under ``seed``) and the
    normalization layers' statistics those of ``inputs``: one TRAIN forward pass fills
    BatchNorm's (and PSPNet BN's) running statistics, so a deep random net keeps activations
    of order 1 in TEST."""
    train = build_net(path, phase=caffe_pb2.TRAIN, seed=seed)
    with torch.no_grad():
        train(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    weights = path.with_suffix(".caffemodel")
    train.save(weights)
    return build_net(path, weights=weights, seed=seed), weights


_OPENCV = """
import sys, cv2, numpy as np
prototxt, weights, feeds, result = sys.argv[1:5]
net = cv2.dnn.readNetFromCaffe(prototxt, weights)
net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
inputs = np.load(feeds)
for name in inputs.files:
    net.setInput(inputs[name], name)
outputs = sys.argv[5:]
np.savez(result, *[np.asarray(o) for o in net.forward(outputs)])
"""


def opencv_forward(prototxt, weights, inputs, outputs, tmp_path):
    """OpenCV 4's dnn on the net (layer parameters from ``prototxt``, blobs from ``weights``):
    the ``outputs`` (layer names). It runs in a process of its own: OpenCV's thread pool in the
    test process would deadlock the data layers' forked workers of later tests."""
    feeds, result = tmp_path / "opencv_inputs.npz", tmp_path / "opencv_outputs.npz"
    np.savez(feeds, **inputs)
    subprocess.run([sys.executable, "-c", _OPENCV, str(prototxt), str(weights), str(feeds), str(result), *outputs],
                   check=True, capture_output=True)
    with np.load(result) as found:
        return [found[f"arr_{i}"] for i in range(len(outputs))]


def run_both(tmp_path, text, inputs, outputs, seed=0, opencv_text=None, opencv_blobs=None):
    """(protocaffe's outputs, OpenCV's outputs) of the net ``text`` with random weights
    (:func:`calibrated_net`); OpenCV reads ``opencv_text`` where the two need different
    prototxt (same layer names), and ``opencv_blobs`` ({layer name: [array]}) adds blobs
    OpenCV's layer wants and protocaffe's has not (OpenCV's Region takes its anchors so)."""
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net, weights = calibrated_net(path, inputs, seed)
    if opencv_blobs:
        param = fileio.read_binary(weights, caffe_pb2.NetParameter)
        for lp in param.layer:
            for array in opencv_blobs.get(lp.name, []):
                fileio.array_to_blob(array, blob=lp.blobs.add())
        fileio.write_binary(param, weights)
    with torch.no_grad():
        blobs = net(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    ours = [blobs[o].numpy() for o in outputs]
    cv_path = tmp_path / "opencv.prototxt"
    cv_path.write_text(opencv_text or text)
    return ours, opencv_forward(cv_path, weights, inputs, outputs, tmp_path)


def max_relative(ours, theirs):
    """max |ours - theirs| / max(1, max |theirs|): the difference on the outputs' own scale."""
    return float(np.abs(ours - theirs).max() / max(1.0, float(np.abs(theirs).max())))
