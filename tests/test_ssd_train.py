"""The tiny SSD of tests/data/golden/ssd/runs/ssd_train, trained by `protocaffe train` as the SSD
fork's `caffe train` trained it (caffe.log, trace.npz, caffe_snapshots/): every loss, the test
rounds' per-class AP and mAP (eval_type "detection", 11-point), the weights at iterations 10
and 20, a resume from the fork's iteration-10 .solverstate, and the deploy net's detections."""
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import GOLDEN, assert_close
from protocaffe import net as netlib
from protocaffe.cli import main
from protocaffe.proto import caffe_pb2

RUN = GOLDEN / "ssd" / "runs" / "ssd_train"
LOSS = re.compile(r"Iteration (\d+)(?: \(.*\))?, loss = (\S+)")
TEST = re.compile(r"Test net output #(\d+): detection_eval = (\S+)")
CLASS = re.compile(r"\] class(\d+): (\S+)")


def blobs(path):
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    return {(layer.name, i): np.array(b.data, np.float32) for layer in net.layer for i, b in enumerate(layer.blobs)}


def assert_same_weights(mine, theirs):
    mine, theirs = blobs(mine), blobs(theirs)
    assert set(mine) == set(theirs)
    for key, value in theirs.items():
        np.testing.assert_allclose(mine[key], value, rtol=1e-5, atol=1e-6, err_msg=str(key))


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A copy of the run folder without the fork's snapshots, as the working directory."""
    case = tmp_path / "ssd_train"
    shutil.copytree(RUN, case, ignore=shutil.ignore_patterns("*.caffemodel", "*.solverstate", "caffe.log"))
    shutil.copy(RUN / "init.caffemodel", case)
    monkeypatch.chdir(case)
    return case


def test_training_repeats_the_forks_losses_test_rounds_and_weights(run, capsys):
    assert main(["train", "--solver", "solver.prototxt", "--weights", "init.caffemodel"]) == 0
    log = capsys.readouterr().err
    trace = np.load(RUN / "trace.npz")
    losses = [(int(i), float(v)) for i, v in LOSS.findall(log)]
    assert [i for i, _ in losses] == list(range(21))  # 20 iterations, then the final forward pass
    np.testing.assert_allclose([v for _, v in losses], trace["loss"], rtol=1e-5)  # 6 printed digits
    tests = [(int(k), float(v)) for k, v in TEST.findall(log)]
    assert tests == [(int(k), v) for _, k, v in trace["test"]]
    assert [(int(c), float(v)) for c, v in CLASS.findall(log)] == [(int(c), v) for _, c, v in trace["test_class_ap"]]
    caffe_log = (RUN / "caffe.log").read_text()
    assert CLASS.findall(log) == CLASS.findall(caffe_log)  # the same text: "class2: 0.736364"
    assert TEST.findall(log) == TEST.findall(caffe_log)
    for it in (10, 20):
        assert_same_weights(run / "caffe_snapshots" / f"ssd_iter_{it}.caffemodel",
                            RUN / "caffe_snapshots" / f"ssd_iter_{it}.caffemodel")


def test_resuming_from_the_forks_solverstate_gives_its_final_weights(run):
    shutil.copy(RUN / "caffe_snapshots" / "ssd_iter_10.solverstate", run / "caffe_snapshots")
    shutil.copy(RUN / "caffe_snapshots" / "ssd_iter_10.caffemodel", run / "caffe_snapshots")
    assert main(["train", "--solver", "solver.prototxt", "--snapshot", "caffe_snapshots/ssd_iter_10.solverstate"]) == 0
    assert_same_weights(run / "caffe_snapshots" / "ssd_iter_20.caffemodel",
                        RUN / "caffe_snapshots" / "ssd_iter_20.caffemodel")


def test_deploy_net_detects_what_the_fork_detected():
    io_ = np.load(RUN / "deploy_io.npz")
    net = netlib.build_net(str(RUN / "deploy.prototxt"), weights=str(RUN / "caffe_snapshots" / "ssd_iter_20.caffemodel"))
    with torch.no_grad():
        out = net(data=torch.from_numpy(io_["in_data"]))
    for key in ("mbox_loc", "mbox_conf_flatten", "mbox_priorbox", "detection_out"):
        assert_close(out[key], io_[f"out_{key}"], what=key)
    assert io_["out_detection_out"].shape == (1, 1, 200, 7)  # keep_top_k 50 for each of 4 images
