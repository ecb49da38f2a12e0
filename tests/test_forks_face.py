"""SphereFace's MarginInnerProduct and caffe-face's CenterLoss against NumPy transcriptions of
the forks' CPU code (margin_inner_product_layer.cpp, center_loss_layer.cpp), forward and
backward (neither backward is the derivative of its forward), and a face classifier tail
that trains through the solver. OpenCV's dnn has neither type."""
import h5py
import numpy as np
import pytest
import torch

import protocaffe
from conftest import assert_close
from fork_nets import make

f32 = np.float32
KINDS = {"SINGLE": 0, "DOUBLE": 1, "TRIPLE": 2, "QUADRUPLE": 3}


def margin_reference(x, weight, label, kind, lam, top_diff):
    """Forward_cpu and Backward_cpu of MarginInnerProductLayer, row by row (float64 here)."""
    w = weight / np.sqrt((weight * weight).sum(1, keepdims=True))  # normalized in place first
    m, n = len(x), len(w)
    norm = np.sqrt((x * x).sum(1))
    cos = x @ w.T / norm[:, None]
    top = x @ w.T
    dx = np.zeros_like(x)
    sign = np.sign
    for i in range(m):
        j, c = int(label[i]), cos[i, int(label[i])]
        s0 = sign(c)
        if kind == 1:
            psi, cw, cx = 2 * s0 * c ** 2 - 1, 4 * s0 * c, -(2 * s0 * c ** 2 + 1) / norm[i]
        elif kind == 2:
            s1 = sign(abs(c) - 0.5)
            s2 = s0 * (1 + s1) - 2
            psi, cw, cx = s1 * (4 * c ** 3 - 3 * c) + s2, s1 * (12 * c ** 2 - 3), -(8 * s1 * c ** 3 - s2) / norm[i]
        elif kind == 3:
            s3 = s0 * sign(2 * c ** 2 - 1)
            s4 = 2 * s0 + s3 - 3
            psi = s3 * (8 * c ** 4 - 8 * c ** 2 + 1) + s4
            cw, cx = s3 * (32 * c ** 3 - 16 * c), -(s3 * (24 * c ** 4 - 8 * c ** 2 - 1) - s4) / norm[i]
        if kind == 0:
            dx[i] = top_diff[i] @ w
            continue
        top[i, j] = norm[i] * psi
        length = np.sqrt(cw * cw + cx * cx)
        for k in range(n):
            if k != j:
                dx[i] += top_diff[i, k] / (1 + lam) * w[k]
            else:
                dx[i] += top_diff[i, k] / (1 + lam) * (cw / length * w[k] + cx / length * x[i])
        dx[i] += lam / (1 + lam) * top_diff[i] @ w
    if kind:
        top = (top + lam * x @ w.T) / (1 + lam)
    return top, dx, top_diff.T @ x, w


MARGIN = ('name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6" top: "lambda" '
          'margin_inner_product_param {{ num_output: 5 type: {kind} base: 1000 gamma: 0.12 power: 1 lambda_min: 5 '
          'iteration: {iteration} weight_filler {{ type: "xavier" }} }}')


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_margin_inner_product_is_the_forks_forward_and_backward(kind):
    rs = np.random.RandomState(KINDS[kind])
    x = rs.randn(6, 2, 2).astype(np.float32)
    label = np.array([0, 1, 4, 2, 4, 3], np.float32)
    mip = make(MARGIN.format(kind=kind, iteration=20), [x.shape, label.shape])
    weight = mip.weight.detach().numpy().astype(np.float64)
    xt = torch.from_numpy(x).requires_grad_()
    out, lam = mip(xt, torch.from_numpy(label))
    # the first forward counts iteration 21: lambda = max(1000 / (1 + 0.12 * 21), 5)
    assert lam.item() == pytest.approx(1000 / (1 + 0.12 * 21), rel=1e-6) and mip.iteration == 21
    diff = rs.randn(6, 5)
    out.backward(torch.from_numpy(diff.astype(np.float32)))
    top, dx, dw, w = margin_reference(x.reshape(6, 4).astype(np.float64), weight, label, KINDS[kind],
                                      lam.item(), diff)
    assert_close(out.detach().numpy(), top, what="top")
    assert_close(xt.grad.numpy().reshape(6, 4), dx, what="bottom diff")
    assert_close(mip.weight.grad.numpy(), dw, what="weight diff")
    assert_close(mip.weight.detach().numpy(), w, what="the weight, normalized in place")


def test_margin_lambda_falls_to_lambda_min_over_the_iterations():
    mip = make(MARGIN.format(kind="QUADRUPLE", iteration=0), [(2, 3), (2,)])
    x, label = torch.randn(2, 3), torch.tensor([1.0, 2.0])
    seen = [mip(x, label)[1].item() for _ in range(3)]
    assert seen == pytest.approx([1000 / 1.12, 1000 / 1.24, 1000 / 1.36], rel=1e-6)
    mip.iteration = 10 ** 6
    assert mip(x, label)[1].item() == 5.0


CENTER = ('name: "center_loss" type: "CenterLoss" bottom: "fc5" bottom: "label" top: "center_loss" '
          'loss_weight: 0.5 center_loss_param { num_output: 4 center_filler { type: "gaussian" } }')


def test_center_loss_value_gradient_and_the_forks_center_update():
    rs = np.random.RandomState(0)
    x = rs.randn(7, 3).astype(np.float32)
    label = np.array([0, 2, 2, 1, 0, 2, 0], np.float32)
    center = make(CENTER, [x.shape, label.shape])
    c = center.centers.detach().numpy().copy()
    xt = torch.from_numpy(x).requires_grad_()
    loss = center(xt, torch.from_numpy(label))
    d = x - c[label.astype(int)]
    assert loss.item() == pytest.approx((d * d).sum() / 7 / 2, rel=1e-6)
    (0.5 * loss).backward()  # the loss weight
    assert_close(xt.grad.numpy(), 0.5 * d / 7)
    want = np.zeros_like(c)  # Backward_cpu: sum of (c_j - x_i) over class j, over 1 + its count
    for j in range(4):
        mine = label == j
        want[j] = -d[mine].sum(0) / (1 + mine.sum())
    assert_close(center.centers.grad.numpy(), want, what="center diff (independent of the loss weight)")


FACE_TAIL = """
name: "face_tail"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{source}" batch_size: 16 }} }}
layer {{ name: "fc5" type: "InnerProduct" bottom: "data" top: "fc5"
  inner_product_param {{ num_output: 6 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6" top: "lambda"
  param {{ lr_mult: 1 decay_mult: 1 }}
  margin_inner_product_param {{ num_output: 4 type: DOUBLE base: 100 gamma: 0.5 power: 1 lambda_min: 1
    weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "softmax_loss" }}
layer {{ name: "center_loss" type: "CenterLoss" bottom: "fc5" bottom: "label" top: "center_loss" loss_weight: 0.05
  param {{ lr_mult: 1 decay_mult: 0 }} center_loss_param {{ num_output: 4 center_filler {{ type: "xavier" }} }} }}
"""


def test_face_classifier_tail_trains(tmp_path):
    """A-Softmax over 4 separable classes with a center-loss branch: both losses fall."""
    rs = np.random.RandomState(0)
    label = np.repeat(np.arange(4), 16).astype(np.float32)
    means = rs.randn(4, 8) * 3
    data = (means[label.astype(int)] + rs.randn(64, 8)).astype(np.float32)
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["data"], f["label"] = data, label
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'train.h5'}\n")
    (tmp_path / "net.prototxt").write_text(FACE_TAIL.format(source=tmp_path / "list.txt"))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 200 '
        f'weight_decay: 0.0005 random_seed: 1 snapshot_after_train: false')
    solver = protocaffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    losses = []
    for _ in range(120):
        solver.step(1)
        losses.append((float(solver.net.blobs["softmax_loss"].data), float(solver.net.blobs["center_loss"].data)))
    first, last = np.mean(losses[:8], 0), np.mean(losses[-8:], 0)
    assert last[0] < 0.5 * first[0] and last[1] < 0.5 * first[1], (first, last)
    assert float(solver.net.blobs["lambda"].data[0]) < 2  # lambda annealed towards lambda_min
    solver.net.forward()  # each forward normalizes the weight rows in place (an update moves them off)
    rows = solver.net.params["fc6"][0].data
    np.testing.assert_allclose((rows * rows).sum(1), 1, rtol=1e-5)
