"""A pycaffe training loop runs unchanged: solver.step, solver.net.blobs, solver.test_nets[0].forward(),
checked against Caffe's own run (golden solver/sgd_step_caffenet)."""
import textwrap

import numpy as np
import pytest

from conftest import GOLDEN, assert_close

SOLVER = GOLDEN / "solver" / "sgd_step_caffenet"

# The loop of Caffe's notebooks (01-learning-lenet), as a user writes it.
LOOP = textwrap.dedent("""
    import numpy as np
    import caffe
    caffe.set_mode_cpu()
    solver = caffe.SGDSolver(SOLVER_PATH)
    solver.net.copy_from("solver/init_mini_caffenet.caffemodel")
    niter, test_interval = 12, 10
    train_loss = np.zeros(niter)
    test_acc, test_loss = [], []
    starts, grads = [], []
    solver.add_callback(lambda: starts.append(solver.iter), lambda: grads.append(solver.iter))
    for it in range(niter):
        solver.step(1)
        train_loss[it] = solver.net.blobs["loss"].data
        conv1 = solver.net.blobs["conv1"].data.copy()
        if (it + 1) % test_interval == 0 and it + 1 < niter:
            acc = loss = 0
            for test_it in range(2):
                out = solver.test_nets[0].forward()
                acc += solver.test_nets[0].blobs["accuracy"].data
                loss += out["loss"]
            test_acc.append(acc / 2)
            test_loss.append(loss / 2)
    """)


def test_pycaffe_training_loop_matches_caffe(golden_cwd, tmp_path, monkeypatch):
    import protocaffe
    monkeypatch.setitem(__import__("sys").modules, "caffe", protocaffe)
    text = (SOLVER / "solver.prototxt").read_text().replace(
        'snapshot_prefix: "snapshots/', f'snapshot_prefix: "{tmp_path}/')
    (tmp_path / "solver.prototxt").write_text(text)
    (tmp_path / "sgd_step_caffenet").mkdir()
    scope = {"SOLVER_PATH": str(tmp_path / "solver.prototxt")}
    exec(compile(LOOP, "training_loop.py", "exec"), scope)
    trace = np.load(SOLVER / "trace.npz")
    assert_close(scope["train_loss"], trace["loss"][:12], what="train loss per iteration")
    test = trace["test"]
    at10 = {int(k): v for it, k, v in test if it == 10}
    # the solver itself tested at iteration 0 (two batches); the loop's two forwards read the next two,
    # as Caffe's test at iteration 10 did
    assert_close(scope["test_acc"], [at10[0]], what="test accuracy at 10")
    assert_close(scope["test_loss"], [at10[1]], what="test loss at 10")
    assert scope["conv1"].shape[0] == 8 and scope["conv1"].min() >= 0  # after the in-place ReLU
    assert scope["starts"] == list(range(12)) and scope["grads"] == list(range(12))
    assert (tmp_path / "sgd_step_caffenet" / "mini_caffenet_iter_10.caffemodel").exists()
    solver = scope["solver"]
    assert solver.iter == 12 and solver.test_nets[0].params["conv1"][0].data is not None
    np.testing.assert_array_equal(solver.test_nets[0].params["conv1"][0].data,
                                  solver.net.params["conv1"][0].data)


SOLVER_TEXT = """
net_param {
  layer { name: "d" type: "DummyData" top: "x" top: "t"
          dummy_data_param { shape { dim: 1 dim: 1 } shape { dim: 1 dim: 1 }
                             data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
          inner_product_param { num_output: 1 bias_term: false weight_filler { type: "constant" value: 0.5 } } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
}
base_lr: 0.1 lr_policy: "fixed" max_iter: 10 test_iter: 1 test_interval: 1000 test_initialization: false
"""


def test_solver_with_host_copies_syncs_both_ways(tmp_path, monkeypatch):
    import protocaffe
    from protocaffe.pycaffe import Blob
    monkeypatch.setattr(Blob, "host_copies_on_cpu", True)
    (tmp_path / "solver.prototxt").write_text(SOLVER_TEXT)
    solver = protocaffe.get_solver(str(tmp_path / "solver.prototxt"))
    weight = solver.net.params["ip"][0].data
    weight[...] = 2.0  # a host write: must reach the solver's tensor before the step
    solver.step(1)
    # loss = (w * 1 - 0)^2 / 2 = 2; dloss/dw = w = 2; w <- 2 - 0.1 * 2
    assert float(solver.net.blobs["loss"].data) == pytest.approx(2.0)
    assert float(solver.net.params["ip"][0].data[0, 0]) == pytest.approx(1.8)
    assert solver.net.params["ip"][0].data is weight  # the held array was refreshed in place
    assert float(solver.test_nets[0].forward()["loss"]) == pytest.approx(1.8 ** 2 / 2)
