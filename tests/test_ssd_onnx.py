"""SSD deploy nets exported to ONNX and run in onnxruntime.

models/ssd300 and models/mobilenet_ssd with test_ssd_opencv's random weights: every blob and
detection_out against protocaffe's within 1e-4, the rows in Caffe-SSD's order. The fork's
golden DetectionOutput cases (tests/data/golden/ssd, every code type, shared and per-class
locations, background labels, thresholds, top_k, keep_top_k, no detections) exported as
one-layer nets against the fork's rows, also with a symbolic batch; its PriorBox, Permute and
Normalize cases against its outputs. The cut before DetectionOutput (`--outputs`) and the
decoding the README gives for it; the eta the export refuses, named.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import GOLDEN, assert_close
from fork_nets import input_layer, layer
from protocaffe import bbox
from protocaffe.cli import main
from protocaffe.errors import CaffeError
from protocaffe.net import build_net
from test_ssd_opencv import MODELS, caffe_order, random_weights

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from protocaffe.onnx_export import to_onnx  # noqa: E402
from test_onnx_export import _golden_case, hidden_blobs, run_onnx, run_protocaffe  # noqa: E402

SSD = GOLDEN / "ssd"
DETOUT = sorted(p.name for p in SSD.glob("detout_*") if p.name != "detout_adaptive_eta")
CUT = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


def ssd_net(model, text=None, tmp_path=None):
    """models/<model>/deploy.prototxt (or ``text`` written to tmp_path) with test_ssd_opencv's
    random weights, and a smooth random image (two with ``batch`` 2)."""
    conf_scale, background_bias = {"ssd300": (1.0, 8.0), "mobilenet_ssd": (2.0, 0.0)}[model]
    path = MODELS / model / "deploy.prototxt"
    if text is not None:
        path = tmp_path / "deploy.prototxt"
        path.write_text(text)
    generator = torch.Generator().manual_seed(0)
    net = build_net(str(path))
    random_weights(net, conf_scale, background_bias, generator)
    images = F.interpolate(torch.randn((2, 3, 6, 6), generator=generator), size=(300, 300), mode="bilinear") * 2
    return net, path, images.numpy()


def assert_rows_equal(got, expected, what):
    """Detection rows in the same order (Caffe-SSD's: image, label, descending score)."""
    got, expected = got.reshape(-1, 7), expected.reshape(-1, 7)
    np.testing.assert_array_equal(got[:, :2], expected[:, :2], err_msg=f"{what}: images and labels")
    assert_close(got, expected, what=what)


@pytest.mark.parametrize("model, rows", [("ssd300", 200), ("mobilenet_ssd", 100)])
def test_ssd_deploy_net_every_blob(model, rows):
    net, _, images = ssd_net(model)
    feeds = {"data": images[:1]}
    got = run_onnx(to_onnx(net, outputs=hidden_blobs(net)), feeds)
    expected = run_protocaffe(net, feeds)
    assert set(got) == set(expected) - {"data"}
    for name in got:
        assert_close(got[name], expected[name], what=name)
    detections = got["detection_out"][0, 0]
    assert len(detections) == rows and len(np.unique(detections[:, 1])) > 3
    np.testing.assert_array_equal(detections, caffe_order(detections))
    assert_rows_equal(detections, expected["detection_out"], "detection_out")


def test_dynamic_batch_mobilenet_ssd_on_two_images():
    net, _, images = ssd_net("mobilenet_ssd")
    model = to_onnx(net, dynamic_batch=True, outputs=["detection_out", "mbox_priorbox"])
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert dims == {"detection_out": [1, 1, "detection_out_rows", 7], "mbox_priorbox": [1, 2, 1917 * 4]}
    got = run_onnx(model, {"data": images})["detection_out"]
    expected = run_protocaffe(net, {"data": images})["detection_out"]
    assert set(got[0, 0, :, 0]) == {0, 1}
    assert_rows_equal(got, expected, "detection_out of two images")


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["fixed", "dynamic"])
@pytest.mark.parametrize("case", DETOUT)
def test_golden_detection_output(case, dynamic_batch):
    io_ = np.load(SSD / case / "io.npz")
    net = build_net(str(SSD / case / "net.prototxt"))
    feeds = {k[3:]: io_[k] for k in io_.files if k.startswith("in_")}
    model = to_onnx(net, dynamic_batch=dynamic_batch, opset=13 if dynamic_batch else 17)
    expected = io_["out_out"]
    assert_rows_equal(run_onnx(model, feeds)["out"], expected, f"{case} vs the fork")
    if dynamic_batch and expected[0, 0, 0, 1] != -1:  # each image's rows are its own
        two = dict(feeds, loc=feeds["loc"][:2], conf=feeds["conf"][:2])
        first_two = expected[0, 0][expected[0, 0, :, 0] < 2]
        assert_rows_equal(run_onnx(model, two)["out"], first_two, f"{case}, first two images")


def corner_net(tmp_path, count, nms_threshold):
    """A one-layer DetectionOutput net over ``count`` priors of size 0 with CORNER codes and the
    variance in the target (loc is the boxes), one class besides the background."""
    text = input_layer("loc", (1, count * 4)) + input_layer("conf", (1, count * 2))
    text += input_layer("priors", (1, 2, count * 4)) + layer("out", "DetectionOutput", ["loc", "conf", "priors"], body=(
        "detection_output_param { num_classes: 2 share_location: true background_label_id: 0 code_type: CORNER "
        f"variance_encoded_in_target: true nms_param {{ nms_threshold: {nms_threshold} }} }}"))
    (tmp_path / "net.prototxt").write_text(text)
    return build_net(str(tmp_path / "net.prototxt"))


def corner_feeds(boxes, scores):
    priors = np.stack([np.zeros(boxes.size), np.full(boxes.size, .1)]).reshape(1, 2, -1)
    return {"loc": boxes.reshape(1, -1), "conf": np.stack([1 - scores, scores], 1).reshape(1, -1),
            "priors": priors.astype(np.float32)}


def assert_kept(net, boxes, scores, kept):
    """protocaffe's rows and the exported net's are those of the boxes ``kept``, in that order."""
    feeds = corner_feeds(boxes, scores)
    expected = np.concatenate([np.zeros((len(kept), 1)), np.ones((len(kept), 1)), scores[kept, None], boxes[kept]], 1)
    assert_rows_equal(run_protocaffe(net, feeds)["out"], expected, "protocaffe")
    assert_rows_equal(run_onnx(to_onnx(net), feeds)["out"], expected, "onnx")


def test_inverted_boxes_overlap_nothing_as_in_the_fork(tmp_path):
    """CORNER codes can give a box with xmax < xmin: the fork's overlap with it is 0 (it suppresses
    nothing and nothing suppresses it, another inverted box included), where onnxruntime's NMS
    would swap its corners."""
    boxes = np.array([[.1, .1, .5, .5], [.5, .5, .1, .1], [.12, .1, .5, .5], [.5, .5, .1, .1]], np.float32)
    assert_kept(corner_net(tmp_path, 4, 0.45), boxes, np.array([.9, .8, .7, .6], np.float32), [0, 1, 3])


def test_equal_scores_are_visited_by_prior_as_in_the_fork(tmp_path):
    """Boxes in a row, each overlapping its neighbours by 0.2, all of score 0.5: the fork visits
    them by prior index and keeps every other one (the ONNX operator leaves the order of equal
    scores to the runtime; the export gives it the ranks)."""
    x = np.arange(7, dtype=np.float32) / 10
    boxes = np.stack([x, np.zeros(7), x + np.float32(.15), np.full(7, .5)], 1).astype(np.float32)
    assert_kept(corner_net(tmp_path, 7, 0.1), boxes, np.full(7, .5, np.float32), [0, 2, 4, 6])


def test_fp16_detection_output():
    """float16 scores and boxes (NMS in float32): the fork's rows within 1e-2 where no two scores
    become equal in float16."""
    io_ = np.load(SSD / "detout_corner_noshare" / "io.npz")
    net = build_net(str(SSD / "detout_corner_noshare" / "net.prototxt"))
    feeds = {k[3:]: io_[k].astype(np.float16) for k in io_.files if k.startswith("in_")}
    got = run_onnx(to_onnx(net, precision="fp16"), feeds)["out"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got[..., :2], io_["out_out"][..., :2])
    assert_close(got, io_["out_out"], rtol=1e-2, atol=1e-3)


def test_eta_that_never_acts_exports(tmp_path):
    """eta lowers the threshold only while it is above 0.5: from 0.45 it stays as it is."""
    text = (SSD / "detout_adaptive_eta" / "net.prototxt").read_text().replace("nms_threshold: 0.75",
                                                                              "nms_threshold: 0.45")
    assert "eta: 0.9" in text and "nms_threshold: 0.45" in text
    (tmp_path / "net.prototxt").write_text(text)
    net = build_net(str(tmp_path / "net.prototxt"))
    io_ = np.load(SSD / "detout_adaptive_eta" / "io.npz")
    feeds = {k[3:]: io_[k] for k in io_.files if k.startswith("in_")}
    expected = run_protocaffe(net, feeds)["out"]
    assert expected.shape[2] > 30
    assert_rows_equal(run_onnx(to_onnx(net), feeds)["out"], expected, "eta 0.9 from 0.45")


def test_adaptive_eta_is_refused_naming_the_layer():
    net = build_net(str(SSD / "detout_adaptive_eta" / "net.prototxt"))
    with pytest.raises(CaffeError, match=r"layer 'test' \(type DetectionOutput\): nms eta 0.9 lowers the overlap "
                                         r"threshold 0.75 after each kept box"):
        to_onnx(net)


@pytest.mark.parametrize("case", sorted(p.name for p in SSD.iterdir() if p.name.startswith(("priorbox", "permute",
                                                                                              "normalize"))))
def test_golden_prior_box_permute_normalize(case):
    net, feeds, got = _golden_case("ssd", case)
    assert_close(got["out"], run_protocaffe(net, feeds)["out"], what=f"{case} vs protocaffe")
    if case.startswith("priorbox"):  # a constant: nothing is computed
        assert [n.op_type for n in to_onnx(net).graph.node] == ["Identity"]


def test_cut_before_detection_output_and_the_readmes_decoding(tmp_path):
    """A DetectionOutput the export refuses (eta 0.9 from 0.6) is left out by --outputs; the
    README's CENTER_SIZE decoding of the cut's outputs gives the boxes of protocaffe's rows."""
    text = (MODELS / "mobilenet_ssd" / "deploy.prototxt").read_text()
    text = text.replace("nms_threshold: 0.45 top_k: 100", "nms_threshold: 0.6 eta: 0.9 top_k: 100")
    net, path, images = ssd_net("mobilenet_ssd", text, tmp_path)
    with pytest.raises(CaffeError, match=r"layer 'detection_out' \(type DetectionOutput\): nms eta 0.9"):
        to_onnx(net)
    net.save(tmp_path / "random.caffemodel")
    out = tmp_path / "cut.onnx"
    assert main(["export_onnx", "--model", str(path), "--weights", str(tmp_path / "random.caffemodel"),
                 "--output", str(out), "--outputs", ",".join(CUT), "--dynamic_batch"]) == 0
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == CUT
    assert {n.op_type for n in model.graph.node}.isdisjoint({"NonMaxSuppression", "TopK"})
    got = run_onnx(model, {"data": images})
    expected = run_protocaffe(net, {"data": images})
    for name in CUT:
        assert_close(got[name], expected[name], what=name)

    loc, priors = got["mbox_loc"].reshape(2, -1, 4), got["mbox_priorbox"].reshape(2, -1, 4)
    prior, variance = priors
    pw, ph = prior[:, 2] - prior[:, 0], prior[:, 3] - prior[:, 1]
    pcx, pcy = (prior[:, 0] + prior[:, 2]) / 2, (prior[:, 1] + prior[:, 3]) / 2
    cx = variance[:, 0] * loc[..., 0] * pw + pcx
    cy = variance[:, 1] * loc[..., 1] * ph + pcy
    w, h = np.exp(variance[:, 2] * loc[..., 2]) * pw, np.exp(variance[:, 3] * loc[..., 3]) * ph
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)  # (N, P, 4)
    rows = expected["detection_out"][0, 0]
    assert len(rows) > 50
    for image, label, score, *box in rows:
        scores = expected["mbox_conf_flatten"].reshape(2, -1, 21)[int(image), :, int(label)]
        prior_of_row = np.flatnonzero(scores == score)
        distances = np.abs(boxes[int(image), prior_of_row] - box).max(-1)
        assert distances.min() < 1e-5
    np.testing.assert_allclose(boxes[0], bbox.decode(prior, variance, loc[0], bbox.CENTER_SIZE, False), atol=1e-6)
