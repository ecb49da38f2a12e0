"""YOLOv2's Caffe layers: Reorg (eric612/MobileNet-YOLO, gklz1982/caffe-yolov2) and Region
(training_toolbox_caffe), against NumPy transcriptions of the forks' loops and, in a YOLOv2
tail net (passthrough Reorg + Concat + Region), against OpenCV 4's dnn."""
import numpy as np
import pytest
import torch

from conftest import assert_close
from fork_nets import make, run_both


def reorg_reference(x, stride, reverse):
    """reorg_cpu(bottom, W, H, C, N, stride, forward=reverse, top) of the forks' reorg_layer.hpp."""
    n, c, h, w = x.shape
    src, out = x.reshape(-1), np.zeros(x.size, x.dtype)
    out_c = c // (stride * stride)
    for b in range(n):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    bottom_index = i + w * (j + h * (k + c * b))
                    c2, offset = k % out_c, k // out_c
                    w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                    top_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if reverse:
                        out[top_index] = src[bottom_index]
                    else:
                        out[bottom_index] = src[top_index]
    shape = (n, c // stride ** 2, h * stride, w * stride) if reverse else (n, c * stride ** 2, h // stride, w // stride)
    return out.reshape(shape)


@pytest.mark.parametrize("stride,reverse", [(2, False), (3, False), (2, True)])
def test_reorg_is_darknets_index_shuffle_and_its_gradient_the_transpose(stride, reverse):
    x = np.random.RandomState(stride).randn(2, 4 * stride ** 2, 2 * stride, 3 * stride).astype(np.float32)
    text = f'name: "r" type: "Reorg" bottom: "a" top: "b" reorg_param {{ stride: {stride} reverse: {str(reverse).lower()} }}'
    reorg = make(text, [x.shape])
    xt = torch.from_numpy(x).requires_grad_()
    out = reorg(xt)
    want = reorg_reference(x, stride, reverse)
    np.testing.assert_array_equal(out.detach().numpy(), want)
    assert tuple(out.shape) == tuple(reorg.top_shapes([x.shape])[0])
    diff = np.random.RandomState(9).randn(*want.shape).astype(np.float32)
    out.backward(torch.from_numpy(diff))
    # each value moves once: the gradient puts each diff back where its value came from
    source = reorg_reference(np.arange(x.size, dtype=np.float64).reshape(x.shape), stride, reverse)
    expected = np.zeros(x.size, np.float32)
    expected[source.reshape(-1).astype(int)] = diff.reshape(-1)
    np.testing.assert_array_equal(xt.grad.numpy().reshape(-1), expected)


def test_reorg_needs_a_stride_and_divisible_sizes():
    with pytest.raises(Exception, match="reorg_param needs stride"):
        make('name: "r" type: "Reorg" bottom: "a" top: "b"', [(1, 8, 4, 4)])
    with pytest.raises(Exception, match="C divisible by stride"):
        make('name: "r" type: "Reorg" bottom: "a" top: "b" reorg_param { stride: 2 }', [(1, 6, 4, 4)])
    with pytest.raises(Exception, match="cannot run in place"):
        make('name: "r" type: "Reorg" bottom: "a" top: "a" reorg_param { stride: 2 }', [(1, 8, 4, 4)])


def region_reference(x, coords, classes, num):
    """RegionLayer::Forward_cpu of training_toolbox_caffe (entry_index, activate_array, softmax_cpu)."""
    n, c, h, w = x.shape
    src, top = x.reshape(-1).astype(np.float64), x.reshape(-1).astype(np.float64).copy()
    inputs = h * w * num * (classes + coords + 1)

    def entry(b, location, e):
        return b * inputs + (location // (w * h)) * w * h * (coords + classes + 1) + e * w * h + location % (w * h)
    for b in range(n):
        for a in range(num):
            i = entry(b, a * w * h, 0)
            top[i:i + 2 * w * h] = 1 / (1 + np.exp(-top[i:i + 2 * w * h]))
            i = entry(b, a * w * h, coords)
            top[i:i + w * h] = 1 / (1 + np.exp(-top[i:i + w * h]))
    first = entry(0, 0, coords + 1)
    for g in range(n * num):
        for cell in range(w * h):
            at = first + g * (inputs // num) + cell + np.arange(classes) * w * h
            e = np.exp(src[at] - src[at].max())
            top[at] = e / e.sum()
    return top.reshape(x.shape)


def test_region_is_darknets_forward():
    x = np.random.RandomState(1).randn(2, 3 * (4 + 1 + 5), 3, 4).astype(np.float32) * 3
    region = make('name: "g" type: "Region" bottom: "a" top: "b" region_param { coords: 4 classes: 5 num: 3 }',
                   [x.shape])
    assert_close(region(torch.from_numpy(x)).numpy(), region_reference(x, 4, 5, 3), rtol=1e-6, atol=1e-7)


YOLO_TAIL = """
name: "yolov2_tail"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 16 dim: 20 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 {fill} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param {{ negative_slope: 0.1 }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv_pass" type: "Convolution" bottom: "pool1" top: "conv_pass" convolution_param {{ num_output: 4 kernel_size: 1 {fill} }} }}
layer {{ name: "reorg" type: "Reorg" bottom: "conv_pass" top: "reorg" reorg_param {{ stride: 2 }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "pool1" top: "pool2" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool2" top: "conv2" convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 {fill} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" relu_param {{ negative_slope: 0.1 }} }}
layer {{ name: "concat" type: "Concat" bottom: "reorg" bottom: "conv2" top: "concat" }}
layer {{ name: "conv_out" type: "Convolution" bottom: "concat" top: "conv_out" convolution_param {{ num_output: 16 kernel_size: 1 {fill} }} }}
{tail}
"""
FILL = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 }'
OURS = 'layer { name: "region" type: "Region" bottom: "conv_out" top: "region" region_param { coords: 4 classes: 3 num: 2 } }'
# OpenCV's Region wants NHWC input, its own parameter names (read as unknown fields of the text)
# (a flag as 1: it reads "true" as a string) and the anchors as the layer's blob; thresh 0 and
# nms_threshold 0 keep every box
OPENCV = ('layer { name: "permute" type: "Permute" bottom: "conv_out" top: "permuted" permute_param { order: 0 order: 2 order: 3 order: 1 } }\n'
          'layer { name: "region" type: "Region" bottom: "permuted" top: "region" '
          'region_param { classes: 3 coords: 4 anchors: 2 softmax: 1 thresh: 0 nms_threshold: 0 } }')


def test_yolov2_tail_computes_opencvs_output(tmp_path):
    """Reorg at stride 2 (OpenCV reads its own reorg_stride, default 2) and Region: OpenCV also
    decodes the boxes, which the test does from protocaffe's activations with the same anchors."""
    anchors = np.array([1.5, 2.0, 3.0, 2.5], np.float32)
    data = np.random.RandomState(3).randn(1, 3, 16, 20).astype(np.float32)
    (reorg, region), (cv_reorg, cv_region) = run_both(
        tmp_path, YOLO_TAIL.format(fill=FILL, tail=OURS), {"data": data}, ["reorg", "region"],
        opencv_text=YOLO_TAIL.format(fill=FILL, tail=OPENCV), opencv_blobs={"region": [anchors]})
    assert_close(reorg, cv_reorg, what="reorg")
    act = region[0]  # (2 anchors * 8, rows 4, cols 5)
    rows, cols = act.shape[1:]
    want = np.zeros((rows * cols * 2, 8), np.float32)
    for y in range(rows):
        for x in range(cols):
            for a in range(2):
                v = act[a * 8:(a + 1) * 8, y, x]
                want[(y * cols + x) * 2 + a] = [(x + v[0]) / cols, (y + v[1]) / rows, np.exp(v[2]) * anchors[2 * a] / cols,
                                                np.exp(v[3]) * anchors[2 * a + 1] / rows, v[4], *(v[4] * v[5:])]
    assert_close(want, cv_region, what="region")
