"""py-faster-rcnn's way of training: Python layers from the user's lib/ (here small layers in
its style, tests/data/forks/frcnn_lib) feed ROIPooling and the losses of an end-to-end Faster
R-CNN-shaped net; the training script's pycaffe calls run as written (caffe.SGDSolver,
solver.net.layers[0].set_roidb, solver.step, caffe.Net(..., caffe.TEST), net.forward(data=...,
im_info=...), net.blobs['rois'].data)."""
import sys

import numpy as np
import pytest

from conftest import DATA

LIB = DATA / "forks" / "frcnn_lib"
MODULES = ("roi_data_layer", "roi_data_layer.layer", "rpn", "rpn.proposal_layer", "rpn.anchor_target_layer",
           "rpn.proposal_target_layer")

BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "rpn_conv" type: "Convolution" bottom: "conv2" top: "rpn_conv"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "rpn_relu" type: "ReLU" bottom: "rpn_conv" top: "rpn_conv" }
layer { name: "rpn_cls_score" type: "Convolution" bottom: "rpn_conv" top: "rpn_cls_score"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "rpn_bbox_pred" type: "Convolution" bottom: "rpn_conv" top: "rpn_bbox_pred"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "rpn_cls_score_reshape" type: "Reshape" bottom: "rpn_cls_score" top: "rpn_cls_score_reshape"
  reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }
"""
PROPOSALS = """
layer { name: "rpn_cls_prob" type: "Softmax" bottom: "rpn_cls_score_reshape" top: "rpn_cls_prob" }
layer { name: "rpn_cls_prob_reshape" type: "Reshape" bottom: "rpn_cls_prob" top: "rpn_cls_prob_reshape"
  reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }
layer { name: "proposal" type: "Python" bottom: "rpn_cls_prob_reshape" bottom: "rpn_bbox_pred" bottom: "im_info"
  top: "{rois}" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 4" } }
"""
HEAD = """
layer { name: "roi_pool" type: "ROIPooling" bottom: "conv2" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_w: 3 pooled_h: 3 spatial_scale: 0.25 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool" top: "fc6"
  inner_product_param { num_output: 32 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "cls_score" type: "InnerProduct" bottom: "fc6" top: "cls_score"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "fc6" top: "bbox_pred"
  inner_product_param { num_output: 12 weight_filler { type: "gaussian" std: 0.001 } } }
"""
TRAIN = ("""name: "faster_rcnn_end2end"
layer { name: "input-data" type: "Python" top: "data" top: "im_info" top: "gt_boxes"
  python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" param_str: "'num_classes': 3" } }
""" + BODY + """
layer { name: "rpn-data" type: "Python" bottom: "rpn_cls_score" bottom: "gt_boxes" bottom: "im_info" bottom: "data"
  top: "rpn_labels" python_param { module: "rpn.anchor_target_layer" layer: "AnchorTargetLayer" param_str: "'feat_stride': 4" } }
layer { name: "rpn_loss_cls" type: "SoftmaxWithLoss" bottom: "rpn_cls_score_reshape" bottom: "rpn_labels"
  propagate_down: 1 propagate_down: 0 top: "rpn_cls_loss" loss_weight: 1 loss_param { ignore_label: -1 normalize: true } }
""" + PROPOSALS.replace("{rois}", "rpn_rois") + """
layer { name: "roi-data" type: "Python" bottom: "rpn_rois" bottom: "gt_boxes"
  top: "rois" top: "labels" top: "bbox_targets" top: "bbox_inside_weights" top: "bbox_outside_weights"
  python_param { module: "rpn.proposal_target_layer" layer: "ProposalTargetLayer" param_str: "'num_classes': 3" } }
""" + HEAD + """
layer { name: "loss_cls" type: "SoftmaxWithLoss" bottom: "cls_score" bottom: "labels" propagate_down: 1 propagate_down: 0
  top: "loss_cls" loss_weight: 1 }
""")
TEST = ("""name: "faster_rcnn_test"
input: "data"
input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
input: "im_info"
input_shape { dim: 1 dim: 3 }
""" + BODY + PROPOSALS.replace("{rois}", "rois") + HEAD + """
layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }
""")


def roidb(rs):
    """Four images of three sizes, each with one bright (class 1) and one dark (class 2) square."""
    entries = []
    for h, w in [(32, 40), (36, 28), (32, 32), (40, 36)]:
        image = rs.randn(3, h, w).astype(np.float32) * 0.2
        boxes, classes = [], []
        for cls, value in ((1, 2.0), (2, -2.0)):
            x1, y1 = rs.randint(0, w - 14), rs.randint(0, h - 14)
            image[:, y1:y1 + 12, x1:x1 + 12] = value
            boxes.append([x1, y1, x1 + 11, y1 + 11])
            classes.append(cls)
        entries.append({"image": image, "boxes": np.array(boxes, np.float32), "gt_classes": np.array(classes)})
    return entries


@pytest.fixture
def frcnn_lib(monkeypatch):
    """py-faster-rcnn's tools/_init_paths.py: the user's lib/ on sys.path."""
    monkeypatch.syspath_prepend(str(LIB))
    for name in MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in MODULES:
        sys.modules.pop(name, None)


def test_faster_rcnn_end2end_trains_and_tests_with_python_layers(tmp_path, frcnn_lib, monkeypatch):
    import protocaffe
    monkeypatch.setitem(sys.modules, "caffe", protocaffe)  # the training script's `import caffe`
    import caffe
    (tmp_path / "train.prototxt").write_text(TRAIN)
    (tmp_path / "test.prototxt").write_text(TEST)
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{tmp_path / "train.prototxt"}" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 '
        f'weight_decay: 0.0005 random_seed: 3 snapshot: 0 display: 0')
    caffe.set_mode_cpu()
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    from roi_data_layer.layer import RoIDataLayer
    data_layer = solver.net.layers[0]
    assert isinstance(data_layer, RoIDataLayer) and data_layer.param_str_ == "'num_classes': 3"
    data_layer.set_roidb(roidb(np.random.RandomState(0)))
    losses = []
    for _ in range(60):
        solver.step(1)
        blobs = solver.net.blobs
        losses.append((float(blobs["rpn_cls_loss"].data), float(blobs["loss_cls"].data)))
        assert blobs["data"].data.shape[2:] in [(32, 40), (36, 28), (32, 32), (40, 36)]
        assert blobs["rois"].data.shape[1:] == (5, 1, 1) and blobs["pool"].data.shape[1:] == (8, 3, 3)
    first, last = np.mean(losses[:8], 0), np.mean(losses[-8:], 0)
    assert (last < 0.7 * first).all(), (first, last)
    solver.net.save(str(tmp_path / "final.caffemodel"))

    net = caffe.Net(str(tmp_path / "test.prototxt"), str(tmp_path / "final.caffemodel"), caffe.TEST)
    image = roidb(np.random.RandomState(1))[1]["image"][np.newaxis]
    net.blobs["data"].reshape(*image.shape)
    net.blobs["im_info"].reshape(1, 3)
    blobs_out = net.forward(data=image, im_info=np.array([[36, 28, 1.0]], np.float32))
    rois = net.blobs["rois"].data.copy()
    assert rois.shape == (4, 5)  # the proposal layer read str(self.phase) == 'TEST'
    assert (rois[:, 1:] >= 0).all() and (rois[:, 3] <= 27).all() and (rois[:, 4] <= 35).all()
    assert blobs_out["cls_prob"].shape == (4, 3) and blobs_out["bbox_pred"].shape == (4, 12)
    np.testing.assert_allclose(blobs_out["cls_prob"].sum(1), 1, rtol=1e-6)


def test_python_layers_see_the_phase_as_pycaffe_shows_it(frcnn_lib):
    from protocaffe.layer_types.python import Phase
    train, test = Phase(0), Phase(1)
    assert (str(train), str(test)) == ("TRAIN", "TEST")  # py-faster-rcnn: cfg[str(self.phase)]
    assert train == 0 and test == 1 and {0: "a"}[train] == "a"  # py-R-FCN: self.phase == 0
