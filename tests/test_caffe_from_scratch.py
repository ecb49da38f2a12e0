"""A seeded training run from scratch gives Caffe's run: its initial weights, crops, mirrors,
dropout masks and so every loss (tests/data/caffe_from_scratch, a real `caffe train`)."""
import re
import shutil

import numpy as np

from conftest import DATA
from protocaffe.cli import main
from protocaffe.proto import caffe_pb2

FOLDER = DATA / "caffe_from_scratch"
LINE = re.compile(r"(Iteration \d+) \(.*\), loss = (\S+)|(Test net output #\d+: \w+) = (\S+)")


def trace(log):
    """[(what, value)] of every displayed training loss and test output, in order."""
    return [(a or c, float(b or d)) for a, b, c, d in LINE.findall(log)]


def blobs(path):
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    return {(layer.name, i): np.array(b.data, np.float32) for layer in net.layer for i, b in enumerate(layer.blobs)}


def test_training_from_scratch_repeats_caffes_run(tmp_path, monkeypatch, capsys):
    case = tmp_path / "case"
    shutil.copytree(FOLDER, case, ignore=shutil.ignore_patterns("scratch_iter_*", "*.log"))
    monkeypatch.chdir(case)
    assert main(["train", "--solver", "solver.prototxt"]) == 0
    ours, caffe = trace(capsys.readouterr().err), trace((FOLDER / "caffe_train.log").read_text())
    assert len(caffe) == 20 + 5 * 2  # 20 losses; 2 test outputs at iterations 0, 5, 10, 15, 20
    assert [w for w, _ in ours[:len(caffe)]] == [w for w, _ in caffe]
    assert ours[2] == ("Iteration 0", 1.22108)  # the first loss: Caffe's fillers, crops and dropout
    np.testing.assert_allclose([v for _, v in ours[:len(caffe)]], [v for _, v in caffe], rtol=2e-5)
    theirs, mine = blobs(FOLDER / "scratch_iter_20.caffemodel"), blobs(case / "scratch_iter_20.caffemodel")
    assert set(theirs) == set(mine)
    for key, value in theirs.items():
        np.testing.assert_allclose(mine[key], value, rtol=1e-5, atol=1e-6, err_msg=str(key))
