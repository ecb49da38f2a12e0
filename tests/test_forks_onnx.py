"""ONNX export of the forks' inference layers, run in onnxruntime against protocaffe: a Faster
R-CNN test head (ROIPooling as MaxRoiPool, Dropout with scale_train: false) and a YOLOv2
tail (Reorg, Region); PSROIPooling has no ONNX form and is refused by name."""
import numpy as np
import pytest
import torch

from conftest import assert_close
from protocaffe.errors import CaffeError
from protocaffe.net import build_net
from test_forks_roi import FILL, FRCNN_HEAD, RFCN_HEAD, random_rois
from test_forks_yolo import FILL as YOLO_FILL, OURS, YOLO_TAIL

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from protocaffe.onnx_export import to_onnx  # noqa: E402


def both(tmp_path, text, feeds, outputs, dynamic_batch=False):
    (tmp_path / "net.prototxt").write_text(text)
    net = build_net(tmp_path / "net.prototxt", seed=3)
    model = to_onnx(net, outputs=outputs, dynamic_batch=dynamic_batch)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = dict(zip(outputs, session.run(outputs, feeds)))
    with torch.no_grad():
        ours = net(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return {k: ours[k].numpy() for k in outputs}, theirs


def test_faster_rcnn_head_exports(tmp_path):
    rs = np.random.RandomState(0)
    feeds = {"data": rs.randn(2, 3, 32, 40).astype(np.float32), "rois": random_rois(rs, 7, 8, 10, 0.25, 2)}
    ours, theirs = both(tmp_path, FRCNN_HEAD.format(n=2, fill=FILL), feeds, ["pool", "fc6", "cls_prob", "bbox_pred"])
    for name in ours:
        assert_close(theirs[name], ours[name], what=name)


@pytest.mark.parametrize("tail", ["forward", "reverse"])
def test_yolov2_tail_exports(tmp_path, tail):
    text = YOLO_TAIL.format(fill=YOLO_FILL, tail=OURS)
    if tail == "reverse":  # the reorg's output taken back by a reverse reorg
        text += 'layer { name: "back" type: "Reorg" bottom: "reorg" top: "back" reorg_param { stride: 2 reverse: true } }'
    data = np.random.RandomState(1).randn(3, 3, 16, 20).astype(np.float32)
    outputs = ["reorg", "region"] + (["back"] if tail == "reverse" else [])
    ours, theirs = both(tmp_path, text.replace("dim: 1 dim: 3 dim: 16", "dim: 3 dim: 3 dim: 16"), {"data": data},
                        outputs, dynamic_batch=True)
    for name in ours:
        assert_close(theirs[name], ours[name], what=name)


def test_psroi_pooling_has_no_onnx_form(tmp_path):
    (tmp_path / "net.prototxt").write_text(RFCN_HEAD.format(fill=FILL))
    with pytest.raises(CaffeError, match="layer 'psroipooled_cls_rois' \\(type PSROIPooling\\): has no faithful ONNX"):
        to_onnx(build_net(tmp_path / "net.prototxt", seed=3))
