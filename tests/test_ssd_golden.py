"""The SSD fork's layers against the fork itself (tests/data/golden/ssd, made by weliu89/caffe's
ssd branch; its README says what each case holds): PriorBox, Permute, Normalize, SmoothL1Loss,
DetectionOutput, MultiBoxLoss (loss, gradients reaching loc_s/conf_s and the Scale layers in
front) and DetectionEvaluate, including its name_size_file counter across two passes."""
import numpy as np
import pytest
import torch

from conftest import GOLDEN, assert_close
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


def _detection_net(body):
    return netlib.CaffeNet(parse_text(
        'layer { name: "in" type: "Input" top: "loc" top: "conf" top: "priors" input_param { '
        'shape { dim: 1 dim: 8 } shape { dim: 1 dim: 6 } shape { dim: 1 dim: 2 dim: 8 } } } '
        'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "priors" '
        f'top: "out" detection_output_param {{ {body} }} }}', caffe_pb2.NetParameter))


@pytest.mark.parametrize("body, message", [
    ("num_classes: 3 background_label_id: -1", "background_label_id -1 needs share_location: false"),
    ('num_classes: 3 save_output_param { output_directory: "out" }', "save_output_param.output_directory"),
    ("num_classes: 3 visualize: true", "visualize is not supported"),
    ("num_classes: 4", r"conf must hold 4 values per prior for 2 priors \(8 per image\), found shape \(1, 6\)"),
    ("share_location: true", "needs num_classes"),
])
def test_detection_output_refusals_name_the_layer(body, message):
    with pytest.raises(CaffeError, match=f"layer 'det' \\(type DetectionOutput\\): .*{message}"):
        _detection_net(body)
