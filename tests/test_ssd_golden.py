"""The SSD fork's layers against the fork itself (tests/data/golden/ssd, made by weliu89/caffe's
ssd branch; its README says what each case holds): PriorBox, Permute, Normalize, SmoothL1Loss,
DetectionOutput, MultiBoxLoss (loss, gradients reaching loc_s/conf_s and the Scale layers in
front) and DetectionEvaluate, including its name_size_file counter across two passes."""
import numpy as np
import pytest
import torch

from conftest import GOLDEN, assert_close, cuda
from protocaffe import net as netlib
from protocaffe.errors import CaffeError
from protocaffe.fileio import parse_text
from protocaffe.proto import caffe_pb2
from test_layers_golden import run_case
from test_shape_agreement import assert_shapes_agree

SSD = GOLDEN / "ssd"
CASES = sorted(p.name for p in SSD.iterdir() if p.name != "runs")


def test_every_layer_type_of_the_fork_has_cases():
    families = {name.split("_")[0] for name in CASES}
    assert families == {"priorbox", "permute", "normalize", "smoothl1", "detout", "mbox", "deteval"}
    assert len(CASES) == 49


@pytest.mark.parametrize("case", CASES)
def test_ssd_golden_case(case):
    run_case(f"ssd/{case}")


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith(("detout", "deteval", "priorbox"))])
def test_shapes_before_data_are_caffes_placeholders(case):
    """The inferred shape is what Caffe's Reshape gives before data; the rows follow the data."""
    io_ = np.load(SSD / case / "io.npz")
    net = netlib.build_net(str(SSD / case / "net.prototxt"), seed=1)
    with torch.no_grad():
        assert_shapes_agree(net, {k[3:]: torch.from_numpy(io_[k]) for k in io_.files if k.startswith("in_")})
    if case.startswith("detout"):
        assert net.blob_shapes["out"] == (1, 1, 1, 7)


def test_detection_evaluate_name_size_counter_runs_across_passes(monkeypatch):
    folder = SSD / "runs" / "detection_evaluate_name_size"
    monkeypatch.chdir(folder)  # the layer opens name_size.txt relative to the working directory
    io_ = np.load(folder / "io.npz")
    net = netlib.build_net("net.prototxt")
    for k in range(2):
        out = net(det=torch.from_numpy(io_[f"pass{k}_in_det"]), gt=torch.from_numpy(io_[f"pass{k}_in_gt"]))["out"]
        assert_close(out, io_[f"pass{k}_out"], what=f"pass {k}")
    assert net.layer_by_name()["test"].next_size == 8 % 3  # 4 images per pass, 3 lines


def test_detection_evaluate_without_its_name_size_file_names_the_layer_and_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CaffeError, match="'test'.*cannot read name_size_file 'name_size.txt'"):
        netlib.build_net(str(SSD / "runs" / "detection_evaluate_name_size" / "net.prototxt"))


def _layer(type_, bottoms, body):
    """A net of an Input with the given bottom shapes and one layer 'l' of ``type_``."""
    names = [f"b{i}" for i in range(len(bottoms))]
    tops = " ".join(f'top: "{n}"' for n in names)
    shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in bottoms)
    uses = " ".join(f'bottom: "{n}"' for n in names)
    return netlib.CaffeNet(parse_text(f'layer {{ name: "in" type: "Input" {tops} input_param {{ {shapes} }} }} '
                                      f'layer {{ name: "l" type: "{type_}" {uses} top: "t" {body} }}',
                                      caffe_pb2.NetParameter))


@pytest.mark.parametrize("body, message", [
    ("num_classes: 3 background_label_id: -1", "background_label_id -1 needs share_location: false"),
    ('num_classes: 3 save_output_param { output_directory: "out" }', "save_output_param.output_directory"),
    ("num_classes: 3 visualize: true", "visualize is not supported"),
    ("num_classes: 4", r"conf must hold 4 values per prior for 2 priors \(8 per image\), found shape \(1, 6\)"),
    ("share_location: true", "needs num_classes"),
])
def test_detection_output_refusals_name_the_layer(body, message):
    with pytest.raises(CaffeError, match=f"layer 'l' \\(type DetectionOutput\\): .*{message}"):
        _layer("DetectionOutput", [(1, 8), (1, 6), (1, 2, 8)], f"detection_output_param {{ {body} }}")


MBOX = [(2, 8), (2, 6), (1, 2, 8), (1, 1, 2, 8)]  # 2 priors, 3 classes


@pytest.mark.parametrize("type_, bottoms, body, message", [
    ("MultiBoxLoss", MBOX, "multibox_loss_param { share_location: false num_classes: 3 }",
     "negative mining .* needs share_location"),
    ("MultiBoxLoss", MBOX, "multibox_loss_param { num_classes: 3 background_label_id: 3 }",
     r"background_label_id 3 must be in \[0, 3\) for SOFTMAX"),
    ("MultiBoxLoss", MBOX, "multibox_loss_param { code_type: CENTER_SIZE }", "needs num_classes"),
    ("MultiBoxLoss", MBOX, "multibox_loss_param { num_classes: 4 }", "conf must hold 4 values per prior"),
    ("MultiBoxLoss", MBOX, "multibox_loss_param { num_classes: 3 map_object_to_agnostic: true }",
     "map_object_to_agnostic needs num_classes 2"),
    ("PriorBox", [(1, 1, 2, 2), (1, 1, 8, 8)], "prior_box_param { max_size: 4 }", "positive min_size"),
    ("PriorBox", [(1, 1, 2, 2), (1, 1, 8, 8)], "prior_box_param { min_size: 4 max_size: 3 }", "must exceed"),
    ("PriorBox", [(1, 1, 2, 2), (1, 1, 8, 8)], "prior_box_param { min_size: 4 variance: 1 variance: 2 }",
     "one or four positive variances"),
    ("PriorBox", [(1, 1, 2, 2), (1, 1, 8, 8)], "prior_box_param { min_size: 4 step: 2 step_h: 2 }",
     "step or step_h/step_w"),
    ("Permute", [(1, 2, 3)], "permute_param { order: 3 }", "order 3 is not an axis of a 3-axis bottom"),
    ("Permute", [(1, 2, 3)], "permute_param { order: 1 order: 1 }", r"order \[1, 1\] repeats an axis"),
    ("Normalize", [(4,)], "", r"at least 2 axes, found shape \(4,\)"),
    ("DetectionEvaluate", [(1, 1, 3, 6), (1, 1, 2, 8)], "detection_evaluate_param { num_classes: 2 }",
     r"detections must have shape \(1, 1, rows, 7\)"),
])
def test_setup_refusals_name_the_layer(type_, bottoms, body, message):
    with pytest.raises(CaffeError, match=f"layer 'l' \\(type {type_}\\): .*{message}"):
        _layer(type_, bottoms, body)


def test_multibox_ground_truth_with_the_background_label_is_an_error():
    net = _layer("MultiBoxLoss", MBOX, "multibox_loss_param { num_classes: 3 }")
    priors = torch.tensor([[0.1, 0.1, 0.4, 0.4, 0.5, 0.5, 0.9, 0.9], [0.1] * 8]).reshape(1, 2, 8)
    gt = torch.tensor([[0, 0, 0, 0.1, 0.1, 0.4, 0.4, 0], [-1] * 8]).reshape(1, 1, 2, 8)
    with pytest.raises(CaffeError, match="ground truth of image 0 has the background label 0"):
        net(b0=torch.zeros(2, 8), b1=torch.zeros(2, 6), b2=priors, b3=gt)


@cuda
@pytest.mark.parametrize("case", CASES)
def test_ssd_golden_case_cuda(case):
    run_case(f"ssd/{case}", "cuda")
