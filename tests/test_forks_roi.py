"""Faster R-CNN's and R-FCN's layers: ROIPooling, PSROIPooling, Dropout's scale_train, against
OpenCV 4's dnn (random weights, small nets shaped like the forks' heads) and against NumPy
transcriptions of the forks' CUDA kernels (roi_pooling_layer.cu, psroi_pooling_layer.cu),
which also give the backward passes."""
import math

import numpy as np
import pytest
import torch

from conftest import assert_close
from fork_nets import make, run_both
from protocaffe.proto import caffe_pb2

f32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)


def c_round(v):
    return math.copysign(math.floor(abs(float(v)) + 0.5), float(v))


def random_rois(rs, n, height, width, scale, images):
    """Regions over the input image, some reaching past the map, some with x2 < x1."""
    x1 = rs.uniform(-4, width / scale, n)
    y1 = rs.uniform(-4, height / scale, n)
    x2 = x1 + rs.uniform(-3, width / scale, n)
    y2 = y1 + rs.uniform(-3, height / scale, n)
    return np.stack([rs.randint(0, images, n), x1, y1, x2, y2], 1).astype(np.float32)


# ---- ROIPooling ---------------------------------------------------------------------------

def roi_pool_reference(x, rois, ph, pw, scale):
    """ROIPoolForward and ROIPoolBackward of caffe-fast-rcnn, loop for loop (float32)."""
    n, c, h, w = x.shape
    top = np.zeros((len(rois), c, ph, pw), np.float32)
    arg = np.full(top.shape, -1)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        sw, sh, ew, eh = (int(c_round(f32(v) * f32(scale))) for v in roi[1:])
        bh, bw = f32(max(eh - sh + 1, 1)) / f32(ph), f32(max(ew - sw + 1, 1)) / f32(pw)
        for p in range(ph):
            for q in range(pw):
                hs = min(max(int(math.floor(f32(p) * bh)) + sh, 0), h)
                he = min(max(int(math.ceil(f32(p + 1) * bh)) + sh, 0), h)
                ws = min(max(int(math.floor(f32(q) * bw)) + sw, 0), w)
                we = min(max(int(math.ceil(f32(q + 1) * bw)) + sw, 0), w)
                for ch in range(c):
                    best, idx = (0.0, -1) if he <= hs or we <= ws else (-FLT_MAX, -1)
                    for hh in range(hs, he):
                        for ww in range(ws, we):
                            if x[b, ch, hh, ww] > best:
                                best, idx = x[b, ch, hh, ww], hh * w + ww
                    top[r, ch, p, q], arg[r, ch, p, q] = best, idx
    return top, arg


def roi_pool_backward_reference(shape, rois, arg, top_diff, ph, pw, scale):
    n, c, h, w = shape
    diff = np.zeros(shape, np.float32)
    for b in range(n):
        for hh in range(h):
            for ww in range(w):
                for r, roi in enumerate(rois):
                    if int(roi[0]) != b:
                        continue
                    sw, sh, ew, eh = (int(c_round(f32(v) * f32(scale))) for v in roi[1:])
                    if not (sw <= ww <= ew and sh <= hh <= eh):
                        continue
                    bh, bw = f32(max(eh - sh + 1, 1)) / f32(ph), f32(max(ew - sw + 1, 1)) / f32(pw)
                    p0 = min(max(math.floor(f32(hh - sh) / bh), 0), ph)
                    p1 = min(max(math.ceil(f32(hh - sh + 1) / bh), 0), ph)
                    q0 = min(max(math.floor(f32(ww - sw) / bw), 0), pw)
                    q1 = min(max(math.ceil(f32(ww - sw + 1) / bw), 0), pw)
                    for p in range(p0, p1):
                        for q in range(q0, q1):
                            hit = arg[r, :, p, q] == hh * w + ww
                            diff[b, hit, hh, ww] += top_diff[r, hit, p, q]
    return diff


ROI_TEXT = 'name: "pool" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" ' \
           'roi_pooling_param {{ pooled_h: {} pooled_w: {} spatial_scale: {} }}'


@pytest.mark.parametrize("ph,pw,scale", [(2, 3, 0.5), (3, 3, 0.25), (4, 2, 1.0)])
def test_roi_pooling_is_the_forks_forward_and_backward(ph, pw, scale):
    rs = np.random.RandomState(ph * 10 + pw)
    x = rs.randn(2, 3, 7, 9).astype(np.float32)
    x[0, 1, :3, :4] = 1.5  # ties inside bins: the first maximum (row-major) wins
    rois = random_rois(rs, 12, 7, 9, scale, 2)
    rois[0] = [1, 5 / scale, 4 / scale, 2 / scale, 1 / scale]  # malformed: forced to 1 x 1
    rois[1] = [0, 0, 0, 3.9 / scale, 2.9 / scale]  # over the ties
    pool = make(ROI_TEXT.format(ph, pw, scale), [x.shape, rois.shape])
    xt = torch.from_numpy(x).requires_grad_()
    out = pool(xt, torch.from_numpy(rois))
    top, arg = roi_pool_reference(x, rois, ph, pw, scale)
    np.testing.assert_array_equal(out.detach().numpy(), top)
    diff = rs.randn(*top.shape).astype(np.float32)
    out.backward(torch.from_numpy(diff))
    want = roi_pool_backward_reference(x.shape, rois, arg, diff, ph, pw, scale)
    np.testing.assert_allclose(xt.grad.numpy(), want, rtol=1e-6, atol=1e-6)


def test_roi_pooling_malformed_region_pools_one_cell_and_passes_no_gradient():
    """x2 < x1: the fork forces the region to 1 x 1 at its start for the forward, but its
    backward counts only cells inside [start, end], which is empty."""
    x = torch.randn(1, 2, 6, 7, requires_grad=True)
    pool = make(ROI_TEXT.format(2, 2, 1.0), [x.shape, (1, 5)])
    out = pool(x, torch.tensor([[0, 5, 4, 2, 1]], dtype=torch.float32))
    assert torch.equal(out, x[:, :, 4:5, 5:6].expand(1, 2, 2, 2))
    out.sum().backward()
    assert not x.grad.any()


def test_roi_pooling_empty_bins_are_zero_and_batch_index_is_checked():
    x = -np.ones((1, 2, 4, 4), np.float32)
    rois = np.array([[0, 6, 6, 9, 9], [0, 1, 1, 2, 2]], np.float32)  # the first lies past the map
    pool = make(ROI_TEXT.format(2, 2, 1.0), [x.shape, rois.shape])
    out = pool(torch.from_numpy(x), torch.from_numpy(rois)).numpy()
    assert (out[0] == 0).all() and (out[1] == -1).all()
    with pytest.raises(Exception, match="batch index is outside"):
        pool(torch.from_numpy(x), torch.tensor([[1, 0, 0, 1, 1]], dtype=torch.float32))


FRCNN_HEAD = """
name: "faster_rcnn_head"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: 3 dim: 32 dim: 40 }} }} }}
layer {{ name: "rois" type: "Input" top: "rois" input_param {{ shape {{ dim: 7 dim: 5 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 stride: 2 {fill} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 stride: 2 {fill} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }}
layer {{ name: "pool" type: "ROIPooling" bottom: "conv2" bottom: "rois" top: "pool"
  roi_pooling_param {{ pooled_w: 3 pooled_h: 3 spatial_scale: 0.25 }} }}
layer {{ name: "fc6" type: "InnerProduct" bottom: "pool" top: "fc6" inner_product_param {{ num_output: 16 {fill} }} }}
layer {{ name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }}
layer {{ name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param {{ dropout_ratio: 0.3 scale_train: false }} }}
layer {{ name: "cls_score" type: "InnerProduct" bottom: "fc6" top: "cls_score"
  inner_product_param {{ num_output: 4 {fill} }} }}
layer {{ name: "bbox_pred" type: "InnerProduct" bottom: "fc6" top: "bbox_pred"
  inner_product_param {{ num_output: 16 {fill} }} }}
layer {{ name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }}
"""
FILL = 'weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "gaussian" std: 0.1 }'


@pytest.mark.parametrize("images", [1, 2])
def test_faster_rcnn_head_computes_opencvs_output(tmp_path, images):
    """ZF-style test head: ROI pooling of conv features, fc layers with scale_train: false dropout."""
    rs = np.random.RandomState(images)
    data = rs.randn(images, 3, 32, 40).astype(np.float32)
    rois = random_rois(rs, 7, 8, 10, 0.25, images)
    outputs = ["pool", "cls_prob", "bbox_pred"]
    ours, cv = run_both(tmp_path, FRCNN_HEAD.format(n=images, fill=FILL), {"data": data, "rois": rois}, outputs)
    for name, a, b in zip(outputs, ours, cv):
        assert_close(a, b, what=name)


# ---- PSROIPooling -------------------------------------------------------------------------

def psroi_reference(x, rois, dim, group, scale):
    """PSROIPoolingForward of caffe-rfcn (float32), with each bin's cells and area for backward."""
    n, c, h, w = x.shape
    top = np.zeros((len(rois), dim, group, group), np.float32)
    cells = {}
    for r, roi in enumerate(rois):
        b = int(roi[0])
        sw, sh = f32(c_round(roi[1])) * f32(scale), f32(c_round(roi[2])) * f32(scale)
        ew, eh = f32(c_round(roi[3]) + 1.0) * f32(scale), f32(c_round(roi[4]) + 1.0) * f32(scale)
        rw, rh = max(f32(ew - sw), f32(0.1)), max(f32(eh - sh), f32(0.1))
        bh, bw = f32(rh / f32(group)), f32(rw / f32(group))
        for k in range(dim):
            for p in range(group):
                for q in range(group):
                    hs = min(max(math.floor(f32(f32(p) * bh) + sh), 0), h)
                    he = min(max(math.ceil(f32(f32(p + 1) * bh) + sh), 0), h)
                    ws = min(max(math.floor(f32(f32(q) * bw) + sw), 0), w)
                    we = min(max(math.ceil(f32(f32(q + 1) * bw) + sw), 0), w)
                    ch = (k * group + p) * group + q
                    area = (he - hs) * (we - ws)
                    if he > hs and we > ws:
                        top[r, k, p, q] = x[b, ch, hs:he, ws:we].sum() / area
                        cells[r, k, p, q] = (b, ch, slice(hs, he), slice(ws, we), area)
    return top, cells


PSROI_TEXT = 'name: "psroi" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" ' \
             'psroi_pooling_param {{ spatial_scale: {} output_dim: {} group_size: {} }}'


@pytest.mark.parametrize("dim,group,scale", [(2, 3, 0.5), (3, 2, 0.0625), (1, 4, 1.0)])
def test_psroi_pooling_is_the_forks_forward_and_backward(dim, group, scale):
    rs = np.random.RandomState(dim * 10 + group)
    x = rs.randn(2, dim * group * group, 8, 9).astype(np.float32)
    rois = random_rois(rs, 10, 8, 9, scale, 2)
    pool = make(PSROI_TEXT.format(scale, dim, group), [x.shape, rois.shape])
    xt = torch.from_numpy(x).requires_grad_()
    out = pool(xt, torch.from_numpy(rois))
    top, cells = psroi_reference(x, rois, dim, group, scale)
    assert_close(out.detach().numpy(), top, rtol=1e-6, atol=1e-6)
    assert (top == 0).any(), "some bins should be empty"
    diff = rs.randn(*top.shape).astype(np.float32)
    out.backward(torch.from_numpy(diff))
    want = np.zeros_like(x)
    for index, (b, ch, hs, ws, area) in cells.items():  # PSROIPoolingBackwardAtomic
        want[b, ch, hs, ws] += diff[index] / area
    assert_close(xt.grad.numpy(), want, rtol=1e-5, atol=1e-6)


def test_psroi_pooling_names_what_is_missing():
    with pytest.raises(Exception, match="psroi_pooling_param needs output_dim"):
        make('name: "p" type: "PSROIPooling" bottom: "x" bottom: "r" top: "y" '
              'psroi_pooling_param { spatial_scale: 0.5 group_size: 2 }', [(1, 8, 4, 4), (1, 5)])
    with pytest.raises(Exception, match=r"output_dim \* group_size\^2 = 8"):
        make(PSROI_TEXT.format(0.5, 2, 2), [(1, 9, 4, 4), (1, 5)])


RFCN_HEAD = """
name: "rfcn_head"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 24 dim: 28 }} }} }}
layer {{ name: "rois" type: "Input" top: "rois" input_param {{ shape {{ dim: 9 dim: 5 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 stride: 2 {fill} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "rfcn_cls" type: "Convolution" bottom: "conv1" top: "rfcn_cls"
  convolution_param {{ num_output: 36 kernel_size: 1 {fill} }} }}
layer {{ name: "rfcn_bbox" type: "Convolution" bottom: "conv1" top: "rfcn_bbox"
  convolution_param {{ num_output: 72 kernel_size: 1 {fill} }} }}
layer {{ name: "psroipooled_cls_rois" type: "PSROIPooling" bottom: "rfcn_cls" bottom: "rois" top: "psroipooled_cls_rois"
  psroi_pooling_param {{ spatial_scale: 0.5 output_dim: 4 group_size: 3 }} }}
layer {{ name: "cls_score" type: "Pooling" bottom: "psroipooled_cls_rois" top: "cls_score"
  pooling_param {{ pool: AVE kernel_size: 3 stride: 3 }} }}
layer {{ name: "psroipooled_loc_rois" type: "PSROIPooling" bottom: "rfcn_bbox" bottom: "rois" top: "psroipooled_loc_rois"
  psroi_pooling_param {{ spatial_scale: 0.5 output_dim: 8 group_size: 3 }} }}
layer {{ name: "bbox_pred" type: "Pooling" bottom: "psroipooled_loc_rois" top: "bbox_pred"
  pooling_param {{ pool: AVE kernel_size: 3 stride: 3 }} }}
layer {{ name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }}
"""


def test_rfcn_head_computes_opencvs_output(tmp_path):
    """Position-sensitive score maps (k*k*(C+1) and k*k*4*2 channels), PSROIPooling, AVE voting."""
    rs = np.random.RandomState(5)
    data = rs.randn(2, 3, 24, 28).astype(np.float32)
    rois = random_rois(rs, 9, 12, 14, 0.5, 2)
    outputs = ["psroipooled_cls_rois", "cls_prob", "bbox_pred"]
    ours, cv = run_both(tmp_path, RFCN_HEAD.format(fill=FILL), {"data": data, "rois": rois}, outputs)
    for name, a, b in zip(outputs, ours, cv):
        assert_close(a, b, what=name)


# ---- Dropout scale_train ------------------------------------------------------------------

def test_dropout_scale_train_false_scales_at_test_not_at_train():
    text = 'name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.25 scale_train: false }'
    x = torch.rand(4000) + 1
    test = make(text, [x.shape])
    assert torch.equal(test(x), x * float(np.float32(1 / np.float32(1 / (1 - np.float32(0.25))))))
    train = make(text, [x.shape], phase=caffe_pb2.TRAIN)
    y = train(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept])  # unscaled
    assert 0.7 < kept.float().mean() < 0.8
