"""R-FCN's online hard example mining (Microsoft/caffe, py-R-FCN's OHEM nets): the per-region
losses, BoxAnnotatorOHEM's choice, and the mining step of a training net, against NumPy
transcriptions of the forks' code (smooth_L1_loss_ohem_layer.cu, softmax_loss_ohem_layer.cu,
box_annotator_ohem_layer.cu). OpenCV's dnn has none of these types."""
import numpy as np
import pytest
import torch

import protocaffe
from conftest import assert_close
from fork_nets import make


@pytest.mark.parametrize("loss_param,divisor", [("", 3 * 2 * 2), ("normalization: FULL", 12),
                                                 ("normalization: BATCH_SIZE", 3), ("normalization: NONE", 1),
                                                 ("normalization: PRE_FIXED pre_fixed_normalizer: 7", 7)])
def test_smooth_l1_loss_ohem(loss_param, divisor):
    """No sigma; VALID and FULL count N*H*W; the gradient is not multiplied by the weights."""
    rs = np.random.RandomState(0)
    a, b = (rs.randn(3, 4, 2, 2).astype(np.float32) * 2 for _ in range(2))
    w = rs.choice([0.0, 0.5, 1.0], size=a.shape).astype(np.float32)
    lp = f'name: "l" type: "SmoothL1LossOHEM" bottom: "a" bottom: "b" bottom: "w" top: "loss" top: "each" ' \
         f'loss_param {{ {loss_param} }}'
    smooth = make(lp, [a.shape] * 3)
    at, bt = torch.from_numpy(a).requires_grad_(), torch.from_numpy(b).requires_grad_()
    loss, each = smooth(at, bt, torch.from_numpy(w))
    d = w * (a - b)
    e = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5)
    assert loss.item() == pytest.approx(e.sum() / divisor, rel=1e-6)
    assert_close(each.numpy(), e.sum(1, keepdims=True))
    loss.backward()
    slope = np.where(np.abs(d) < 1, d, np.sign(d)) / divisor
    assert_close(at.grad.numpy(), slope)
    assert_close(bt.grad.numpy(), -slope)


def test_softmax_with_loss_third_top_is_each_positions_loss():
    rs = np.random.RandomState(1)
    x = rs.randn(5, 3).astype(np.float32)
    label = np.array([0, 2, -1, 1, 2], np.float32)
    for type_ in ("SoftmaxWithLoss", "SoftmaxWithLossOHEM"):
        loss = make(f'name: "l" type: "{type_}" bottom: "x" bottom: "y" top: "loss" top: "prob" top: "each" '
                     'loss_param { ignore_label: -1 }', [x.shape, label.shape])
        value, prob, each = loss(torch.from_numpy(x), torch.from_numpy(label))
        logp = x - np.log(np.exp(x).sum(1, keepdims=True))
        want = np.where(label >= 0, -logp[np.arange(5), np.maximum(label, 0).astype(int)], 0)
        assert_close(each.numpy(), want)
        assert value.item() == pytest.approx(want.sum() / 4, rel=1e-6)
        assert each.shape == (5,) and not each.requires_grad


def box_annotator_reference(rois, loss, labels, weights, per_image, ignore):
    """Forward_gpu of BoxAnnotatorOHEMLayer (host code), ties in region order."""
    out_labels = np.full(len(labels), ignore, np.float32)
    out_weights = np.zeros_like(weights)
    left = [per_image] * (int(rois[:, 0].max()) + 1)
    for i in sorted(range(len(loss)), key=lambda i: -loss[i]):
        image = int(rois[i, 0])
        if left[image] > 0:
            left[image] -= 1
            out_labels[i], out_weights[i] = labels[i], weights[i]
    return out_labels, out_weights


def test_box_annotator_ohem_keeps_the_hardest_regions_of_each_image():
    rs = np.random.RandomState(2)
    rois = np.concatenate([rs.randint(0, 3, (20, 1)), rs.rand(20, 4) * 50], 1).astype(np.float32)
    loss = rs.rand(20).astype(np.float32)
    labels = rs.randint(0, 5, 20).astype(np.float32)
    weights = rs.rand(20, 8).astype(np.float32)
    ohem = make('name: "a" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "loss" bottom: "labels" bottom: "w" '
                 'top: "labels_ohem" top: "w_ohem" box_annotator_ohem_param { roi_per_img: 3 ignore_label: -1 }',
                 [rois.shape, loss.shape, labels.shape, weights.shape])
    got_labels, got_weights = ohem(*map(torch.from_numpy, (rois, loss, labels, weights)))
    want_labels, want_weights = box_annotator_reference(rois, loss, labels, weights, 3, -1)
    np.testing.assert_array_equal(got_labels.numpy().reshape(-1), want_labels)
    assert got_weights.shape == (20, 8, 1, 1)  # the fork's tops are 4-d
    np.testing.assert_array_equal(got_weights.numpy().reshape(20, 8), want_weights)
    assert (want_labels != -1).sum() == 9


OHEM_NET = """
name: "rfcn_ohem"
layer { name: "input" type: "Input" top: "feat" top: "labels" top: "bbox_targets" top: "bbox_inside_weights" top: "rois"
  input_param { shape { dim: 12 dim: 6 } shape { dim: 12 dim: 1 dim: 1 dim: 1 } shape { dim: 12 dim: 8 dim: 1 dim: 1 }
                shape { dim: 12 dim: 8 dim: 1 dim: 1 } shape { dim: 12 dim: 5 dim: 1 dim: 1 } } }
layer { name: "cls_score" type: "InnerProduct" bottom: "feat" top: "cls_score"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "feat" top: "bbox_pred"
  inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "per_roi_loss_cls" type: "SoftmaxWithLossOHEM" bottom: "cls_score" bottom: "labels"
  top: "temp_loss_cls" top: "temp_prob_cls" top: "per_roi_loss_cls"
  loss_weight: 0 loss_weight: 0 loss_weight: 0 propagate_down: false propagate_down: false }
layer { name: "per_roi_loss_bbox" type: "SmoothL1LossOHEM" bottom: "bbox_pred" bottom: "bbox_targets"
  bottom: "bbox_inside_weights" top: "temp_loss_bbox" top: "per_roi_loss_bbox"
  loss_weight: 0 loss_weight: 0 propagate_down: false propagate_down: false propagate_down: false }
layer { name: "per_roi_loss" type: "Eltwise" bottom: "per_roi_loss_cls" bottom: "per_roi_loss_bbox" top: "per_roi_loss"
  propagate_down: false propagate_down: false }
layer { name: "annotator_detector" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "per_roi_loss" bottom: "labels"
  bottom: "bbox_inside_weights" top: "labels_ohem" top: "bbox_loss_weights_ohem"
  propagate_down: false propagate_down: false propagate_down: false propagate_down: false
  box_annotator_ohem_param { roi_per_img: 2 ignore_label: -1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "cls_score" bottom: "labels_ohem" top: "loss_cls"
  propagate_down: true propagate_down: false loss_param { ignore_label: -1 normalization: VALID } }
layer { name: "accuarcy" type: "Accuracy" bottom: "cls_score" bottom: "labels_ohem" top: "accuarcy"
  accuracy_param { ignore_label: -1 } }
layer { name: "loss_bbox" type: "SmoothL1LossOHEM" bottom: "bbox_pred" bottom: "bbox_targets"
  bottom: "bbox_loss_weights_ohem" top: "loss_bbox" loss_weight: 1
  propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 4 } }
"""


def test_rfcn_ohem_training_step_learns_from_the_hardest_regions_only(tmp_path):
    """py-R-FCN's OHEM head (its proposal target layer gives 4-d blobs: labels (R, 1, 1, 1), ...):
    per-region losses (weight 0), their sum, BoxAnnotatorOHEM, then the losses on the kept
    regions; gradients reach only the kept regions' rows."""
    (tmp_path / "net.prototxt").write_text(OHEM_NET)
    net = protocaffe.Net(str(tmp_path / "net.prototxt"), protocaffe.TRAIN, seed=4)
    rs = np.random.RandomState(3)
    rois = np.concatenate([np.repeat([0, 1, 2], 4)[:, None], rs.rand(12, 4) * 40], 1)[:, :, None, None]
    inputs = {"feat": rs.randn(12, 6), "labels": rs.randint(0, 3, (12, 1, 1, 1)), "rois": rois,
              "bbox_targets": rs.randn(12, 8, 1, 1), "bbox_inside_weights": (rs.rand(12, 8, 1, 1) < 0.5)}
    out = net.forward(**{k: np.asarray(v, np.float32) for k, v in inputs.items()})
    per_roi = net.blobs["per_roi_loss"].data.reshape(-1)
    kept = net.blobs["labels_ohem"].data.reshape(-1) != -1
    assert kept.sum() == 6
    for image in range(3):  # the two largest losses of each image
        mine = np.arange(12)[rois[:, 0, 0, 0] == image]
        assert set(mine[kept[mine]]) == set(mine[np.argsort(-per_roi[mine])[:2]])
    net.backward()
    score_diff, bbox_diff = net.blobs["cls_score"].diff, net.blobs["bbox_pred"].diff
    assert not score_diff[~kept].any() and score_diff[kept].any()
    assert not bbox_diff[~kept].any()
    cls = net.blobs["cls_score"].data
    logp = cls - np.log(np.exp(cls).sum(1, keepdims=True))
    labels = inputs["labels"].reshape(-1)
    assert out["loss_cls"] == pytest.approx(-logp[kept, labels[kept]].mean(), rel=1e-5)


@pytest.mark.parametrize("sigma", [None, 3.0])
def test_faster_rcnn_smooth_l1_loss_with_sigma_and_weights(sigma):
    """Faster R-CNN's SmoothL1Loss (smooth_l1_loss_layer.cu of caffe-fast-rcnn): d = w_in (a - b),
    0.5 sigma^2 d^2 below 1 / sigma^2, |d| - 0.5 / sigma^2 above, times w_out, summed over all
    and divided by N; gradients to a and b only. Hand-computed in NumPy."""
    rs = np.random.RandomState(2)
    a, b = (rs.randn(2, 8, 3, 3).astype(np.float32) for _ in range(2))
    w_in = rs.choice([0.0, 1.0], size=a.shape).astype(np.float32)
    w_out = rs.choice([0.0, 0.25, 1.0], size=a.shape).astype(np.float32)
    param = "" if sigma is None else f"smooth_l1_loss_param {{ sigma: {sigma} }}"
    loss_layer = make(f'name: "l" type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "wi" bottom: "wo" '
                      f'top: "loss" {param}', [a.shape] * 4)
    at, bt = torch.from_numpy(a).requires_grad_(), torch.from_numpy(b).requires_grad_()
    wi, wo = torch.from_numpy(w_in).requires_grad_(), torch.from_numpy(w_out)
    loss = loss_layer(at, bt, wi, wo)
    s2 = 1.0 if sigma is None else sigma ** 2
    d = w_in * (a - b)
    e = w_out * np.where(np.abs(d) < 1 / s2, 0.5 * s2 * d * d, np.abs(d) - 0.5 / s2)
    assert loss.item() == pytest.approx(e.sum() / 2, rel=1e-5)
    loss.backward()
    slope = w_out * w_in * np.where(np.abs(d) < 1 / s2, s2 * d, np.sign(d)) / 2
    assert_close(at.grad.numpy(), slope)
    assert_close(bt.grad.numpy(), -slope)
    assert wi.grad is None


def test_smooth_l1_loss_refuses_three_bottoms_and_misshapen_weights():
    with pytest.raises(protocaffe.CaffeError, match="layer 'l'.*2 bottoms .* or 4 .*found 3"):
        make('name: "l" type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "w" top: "loss"', [(2, 4)] * 3)
    with pytest.raises(protocaffe.CaffeError, match="layer 'l'.*outside weights need the prediction's count 8"):
        make('name: "l" type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "w" bottom: "v" top: "loss"',
             [(2, 4), (2, 4), (2, 4), (2, 3)])
