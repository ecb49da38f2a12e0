"""Every golden `caffe train` run: losses, learning rates, test outputs and weights match Caffe's."""
import logging
import re

import numpy as np
import pytest
import torch

from conftest import GOLDEN, assert_close
from protocaffe import fileio
from protocaffe.net import read_weights_param
from protocaffe.solver import SGDSolver, get_solver, read_solver_param
from protocaffe.solver.policies import POLICIES

CONFIGS = sorted(p.name for p in (GOLDEN / "solver").iterdir() if (p / "solver.prototxt").exists())
TRAIN_LINE = re.compile(r"Iteration (\d+) \(.* iter/s, .*s/\d+ iters\), loss = ([-+\d.e]+)")
LR_LINE = re.compile(r"Iteration (\d+), lr = ([-+\d.e]+)")
TEST_LINE = re.compile(r"Test net output #(\d+): \S+ = ([-+\d.e]+)")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def captured():
    handler = Capture()
    logger = logging.getLogger("protocaffe")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old)


def make_solver(config, tmp_path):
    p = read_solver_param(GOLDEN / "solver" / config / "solver.prototxt")
    p.snapshot_prefix = str(tmp_path / "snap")
    net = "caffenet" if "caffenet" in p.net else "alexnet"
    return get_solver(p, weights=f"solver/init_mini_{net}.caffemodel"), net


def assert_weights_equal_caffe(config, net, ours, iteration, rtol=2e-4):
    ref = read_weights_param(GOLDEN / "solver" / config / "caffe_snapshots" / f"mini_{net}_iter_{iteration}.caffemodel")
    mine = read_weights_param(ours)
    assert [l.name for l in ref.layer if l.blobs] == [l.name for l in mine.layer if l.blobs]
    for a, b in zip([l for l in ref.layer if l.blobs], [l for l in mine.layer if l.blobs]):
        for i, (x, y) in enumerate(zip(a.blobs, b.blobs)):
            assert_close(fileio.blob_to_array(y), fileio.blob_to_array(x), rtol=rtol, atol=2e-6,
                         what=f"{config} iter {iteration} {a.name} blob {i}")


@pytest.mark.parametrize("config", CONFIGS)
def test_training_matches_caffe(golden_cwd, tmp_path, captured, config):
    solver, net = make_solver(config, tmp_path)
    solver.solve()
    trace = np.load(GOLDEN / "solver" / config / "trace.npz")
    losses = {int(m[1]): float(m[2]) for m in map(TRAIN_LINE.search, captured) if m}
    rates = {int(m[1]): float(m[2]) for m in map(LR_LINE.search, captured) if m}
    for it, loss, lr in zip(trace["iteration"], trace["loss"], trace["lr"]):
        assert losses[int(it)] == pytest.approx(float(loss), rel=2e-4, abs=1e-5), f"loss at {it}"
        assert rates[int(it)] == pytest.approx(float(lr), rel=1e-5), f"lr at {it}"
    tests = [float(m[2]) for m in map(TEST_LINE.search, captured) if m]
    np.testing.assert_allclose(tests, trace["test"][:, 2], rtol=2e-4, atol=1e-5)
    for it in (10, 20):
        assert_weights_equal_caffe(config, net, tmp_path / f"snap_iter_{it}.caffemodel", it)


@pytest.mark.parametrize("config", ["sgd_step_alexnet", "nesterov_multistep", "adam_fixed", "adadelta_poly"])
def test_resuming_caffes_solverstate_reaches_caffes_weights(golden_cwd, tmp_path, config):
    solver, net = make_solver(config, tmp_path)
    state = GOLDEN / "solver" / config / "caffe_snapshots" / f"mini_{net}_iter_10.solverstate"
    solver.solve(str(state))
    assert solver.iter == 20
    assert_weights_equal_caffe(config, net, tmp_path / "snap_iter_20.caffemodel", 20)


def test_straight_and_resumed_runs_are_bit_identical(golden_cwd, tmp_path):
    straight, _ = make_solver("nesterov_multistep", tmp_path / "a")
    (tmp_path / "a").mkdir()
    straight.solve()
    (tmp_path / "b").mkdir()
    resumed, _ = make_solver("nesterov_multistep", tmp_path / "b")
    resumed.solve(str(tmp_path / "a" / "snap_iter_10.solverstate"))
    a = read_weights_param(tmp_path / "a" / "snap_iter_20.caffemodel")
    b = read_weights_param(tmp_path / "b" / "snap_iter_20.caffemodel")
    assert a.SerializeToString() == b.SerializeToString()


def test_step_and_pycaffe_api(golden_cwd, tmp_path):
    p = read_solver_param(GOLDEN / "solver" / "sgd_step_caffenet" / "solver.prototxt")
    p.snapshot_prefix = str(tmp_path / "s")
    solver = get_solver(p)
    solver.step(3)
    assert solver.iter == 3 and len(solver.test_nets) == 1
    assert solver.test_nets[0].layer_by_name()["conv1"].weight is solver.net.layer_by_name()["conv1"].weight
    model, state = solver.snapshot()
    assert model.endswith("s_iter_3.caffemodel") and state.endswith("s_iter_3.solverstate")
    again = get_solver(p)
    again.restore(state)
    assert again.iter == 3
    assert torch.equal(again.net.layer_by_name()["fc8"].weight, solver.net.layer_by_name()["fc8"].weight)
    with pytest.raises(Exception, match="is a Nesterov solver, not Adam"):
        from protocaffe.solver import AdamSolver
        AdamSolver(str(GOLDEN / "solver" / "nesterov_multistep" / "solver.prototxt"))
    assert SGDSolver(str(GOLDEN / "solver" / "sgd_step_caffenet" / "solver.prototxt")).param.type == "SGD"


def test_lr_policies_by_formula():
    from protocaffe.proto import caffe_pb2
    p = caffe_pb2.SolverParameter(base_lr=0.1, gamma=0.5, power=2, stepsize=10, max_iter=100)
    p.stepvalue.extend([3, 7])
    assert POLICIES["fixed"](p, 55, 0)[0] == pytest.approx(0.1)
    assert POLICIES["step"](p, 25, 0)[0] == pytest.approx(0.1 * 0.5 ** 2)
    assert POLICIES["exp"](p, 3, 0)[0] == pytest.approx(0.1 * 0.5 ** 3)
    assert POLICIES["inv"](p, 4, 0)[0] == pytest.approx(0.1 * (1 + 0.5 * 4) ** -2)
    assert POLICIES["poly"](p, 50, 0)[0] == pytest.approx(0.1 * 0.5 ** 2)
    assert POLICIES["sigmoid"](p, 10, 0)[0] == pytest.approx(0.05)
    step, rates = 0, []
    for it in range(9):
        rate, step = POLICIES["multistep"](p, it, step)
        rates.append(rate)
    assert rates == pytest.approx([0.1] * 3 + [0.05] * 4 + [0.025] * 2)


def test_plateau_policy_follows_a_scripted_sequence_of_test_losses():
    from protocaffe.proto import caffe_pb2
    from protocaffe.solver.policies import plateau_observe
    p = caffe_pb2.SolverParameter(base_lr=0.01, gamma=0.1, lr_policy="plateau", plateau_patience=2,
                                  plateau_max_drops=2)
    losses = [1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.72, 0.71, 0.74, 0.73, 0.9]
    best, wait, step, rates = None, 0, 0, []
    for loss in losses:
        best, wait, step = plateau_observe(p, loss, False, best, wait, step)
        rates.append(POLICIES["plateau"](p, 0, step)[0])
    # improvements at 1.0, 0.8, 0.7; two rounds without one after 0.8 and after 0.7 -> two drops,
    # and no third drop however long the plateau lasts
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.0001, 0.0001, 0.0001,
                                   0.0001, 0.0001])
    best, wait, step = plateau_observe(p, 0.5, True, 0.6, 0, 0)  # accuracy: higher is better
    assert (best, wait, step) == (0.6, 1, 0)


def test_plateau_policy_in_a_solver_run(golden_cwd, tmp_path, captured):
    p = read_solver_param(GOLDEN / "solver" / "sgd_step_caffenet" / "solver.prototxt")
    p.lr_policy, p.plateau_output, p.plateau_patience = "plateau", "accuracy", 1
    p.test_interval, p.max_iter, p.snapshot = 2, 8, 4
    p.base_lr = 0.0  # nothing learns, so accuracy never improves after the first round
    p.snapshot_prefix = str(tmp_path / "snap")
    solver = get_solver(p)
    solver.solve()
    assert solver.current_step == 3  # plateau_max_drops defaults to 3
    assert any("Plateau Status" in line for line in captured)
    again = get_solver(p)
    again.restore(str(tmp_path / "snap_iter_4.solverstate"))
    assert again.current_step == 1 and again.plateau_best == solver.plateau_best


def test_signals_snapshot_and_stop(golden_cwd, tmp_path):
    import signal
    p = read_solver_param(GOLDEN / "solver" / "sgd_step_caffenet" / "solver.prototxt")
    p.snapshot_prefix, p.snapshot, p.test_interval = str(tmp_path / "sig"), 0, 0
    solver = get_solver(p)
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGHUP)
    try:
        solver.handle_signals("stop", "snapshot")
        signal.raise_signal(signal.SIGHUP)       # snapshot after this iteration, go on
        assert solver.step(2) is False and solver.iter == 2
        assert (tmp_path / "sig_iter_1.caffemodel").exists()
        signal.raise_signal(signal.SIGINT)       # stop after this iteration; solve still snapshots
        solver.solve()
        assert solver.iter == 3 and (tmp_path / "sig_iter_3.solverstate").exists()
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGHUP, old[1])


# ---- solver_mode, as tools/caffe.cpp reads it ------------------------------------------------------

def test_solver_mode_is_read_only_where_the_file_sets_it(monkeypatch):
    """Caffe's train: without --gpu, a file's ``solver_mode: GPU`` picks ``device_id`` (0 unless
    set); a file without solver_mode trains on the CPU, though the field's default is GPU."""
    from protocaffe.proto import caffe_pb2
    from protocaffe.solver.solver import _device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    p = caffe_pb2.SolverParameter()
    assert p.solver_mode == caffe_pb2.SolverParameter.GPU and _device(p) == torch.device("cpu")
    p.solver_mode = caffe_pb2.SolverParameter.GPU
    assert _device(p) == torch.device("cuda", 0)
    p.device_id = 1
    assert _device(p) == torch.device("cuda", 1)
    p.solver_mode = caffe_pb2.SolverParameter.CPU
    assert _device(p) == torch.device("cpu")


TINY_NET = """
    layer { name: "d" type: "DummyData" top: "x" top: "t" dummy_data_param { shape { dim: 2 dim: 3 }
            shape { dim: 2 dim: 1 } data_filler { type: "gaussian" } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 1 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
    """


@pytest.mark.parametrize("mode, warned", [("", False), ("solver_mode: GPU", True), ("solver_mode: CPU", False)])
def test_train_without_cuda_warns_only_of_a_solver_mode_the_file_sets(tmp_path, capsys, monkeypatch, mode, warned):
    from protocaffe.cli import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path}/net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                              f'max_iter: 1 snapshot_after_train: false {mode}')
    assert main(["train", "--solver", str(tmp_path / "solver.prototxt")]) == 0
    err = capsys.readouterr().err
    assert "] Use CPU." in err
    assert ("solver_mode is GPU but no CUDA device is available; running on the CPU" in err) == warned
