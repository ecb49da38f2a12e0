"""parse_log and plot_training_log on Caffe's own training logs (golden solver/*/caffe.log),
checked against the same runs' trace.npz."""
import cv2
import numpy as np
import pytest

from conftest import GOLDEN
from protocaffe.cli import main
from protocaffe.commands import parse_log, plot_training_log

CONFIGS = sorted(p.parent.name for p in (GOLDEN / "solver").glob("*/caffe.log"))


@pytest.mark.parametrize("config", CONFIGS)
def test_parse_log_rows_match_the_runs_trace(config):
    train, test = parse_log.parse_log(GOLDEN / "solver" / config / "caffe.log")
    trace = np.load(GOLDEN / "solver" / config / "trace.npz")
    assert [r["NumIters"] for r in train] == list(trace["iteration"].astype(float))
    # a row takes the last lr printed before it: the previous iteration's (the first copies the second)
    lr = trace["lr"]
    np.testing.assert_allclose([r["LearningRate"] for r in train], np.r_[lr[0], lr[:-1]], rtol=1e-5)
    if "average_loss" not in (GOLDEN / "solver" / config / "solver.prototxt").read_text():
        np.testing.assert_allclose([r["loss"] for r in train], trace["loss"], rtol=1e-5)
    expected = {}
    for it, k, v in trace["test"]:
        expected.setdefault(float(it), []).append(v)
    assert [r["NumIters"] for r in test] == list(expected)
    np.testing.assert_allclose([[r["accuracy"], r["loss"]] for r in test], list(expected.values()), rtol=1e-5)
    seconds = [r["Seconds"] for r in train]
    assert seconds == sorted(seconds) and seconds[0] >= 0


def test_parse_log_writes_caffes_csv_files(tmp_path):
    log = GOLDEN / "solver" / "sgd_step_caffenet" / "caffe.log"
    assert main(["parse_log", str(log), str(tmp_path)]) == 0
    test = (tmp_path / "caffe.log.test").read_bytes().decode()
    # 22:02:36.276407 (first test output) - 22:02:36.273314 (Solving) = 0.003093 s
    assert test.split("\r\n")[:2] == ["NumIters,Seconds,LearningRate,accuracy,loss",
                                      "0.0,0.003093,0.05,0.1875,1.39609"]
    train = (tmp_path / "caffe.log.train").read_text().splitlines()
    assert train[0] == "NumIters,Seconds,LearningRate,loss" and len(train) == 21
    assert main(["parse_log", str(log), str(tmp_path / "missing")]) == 1


@pytest.mark.parametrize("chart", range(8))
def test_chart_types_read_the_right_series(chart):
    log = GOLDEN / "solver" / "sgd_step_caffenet" / "caffe.log"
    trace = np.load(GOLDEN / "solver" / "sgd_step_caffenet" / "trace.npz")
    y_field, x_field = plot_training_log.CHART_TYPES[chart].split(plot_training_log.SEPARATOR)
    iters, seconds, ys = plot_training_log.read_series(log, y_field)
    expected = {"Test accuracy": trace["test"][0::2, 2], "Test loss": trace["test"][1::2, 2],
                "Train learning rate": trace["lr"], "Train loss": trace["loss"]}[y_field]
    # Solve() displays the loss once more after the last iteration, and parse_log.sh keeps that line
    extra = 1 if y_field == "Train loss" else 0
    assert len(ys) == len(expected) + extra
    np.testing.assert_allclose(ys[:len(expected)], expected, rtol=1e-5)
    assert len(seconds) == len(iters) and seconds == sorted(seconds)


def test_plot_training_log_writes_a_png(tmp_path):
    out = tmp_path / "loss.png"
    logs = [str(GOLDEN / "solver" / c / "caffe.log") for c in ("sgd_step_caffenet", "adam_fixed")]
    assert main(["plot_training_log", "6", str(out)] + logs) == 0
    image = cv2.imread(str(out))
    assert image is not None and image.shape[2] == 3 and image.std() > 10
    assert main(["plot_training_log", "8", str(out)] + logs) == 1
    assert main(["plot_training_log", "6", str(tmp_path / "x.jpg")] + logs) == 1
