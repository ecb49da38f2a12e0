"""Data-parallel training with gloo on the CPU: Caffe's multi-GPU semantics, checked across processes.

Ranks run in processes forked from a forkserver that has torch and protocaffe
loaded (fast, and free of the test process's thread pools); each joins a gloo
group through protocaffe.distributed.run, as a spawned or torchrun rank does.
"""
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys

import lmdb
import numpy as np
import pytest
import torch

from conftest import GOLDEN, assert_close
from protocaffe import distributed, fileio
from protocaffe.cli import main
from protocaffe.errors import CaffeError
from protocaffe.net import CaffeNet, filter_net, read_net_param
from protocaffe.proto import caffe_pb2
from protocaffe.solver import CaffeSolver, read_solver_param

INIT = {"sgd_step_caffenet": "solver/init_mini_caffenet.caffemodel",
        "adam_fixed": "solver/init_mini_alexnet.caffemodel"}
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["torch", "torch._dynamo", "protocaffe.solver", "protocaffe.distributed"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(index, world, port, out, fn, args, timeout=20):
    os.chdir(GOLDEN)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PROTOCAFFE_DIST_TIMEOUT=str(timeout))
    torch.set_num_threads(1)
    try:
        distributed.run(distributed.Rank(index, world, index), fn, out, *args)
    except CaffeError as e:
        (out / f"error{index}.txt").write_text(str(e))


def run_ranks(fn, out, *args, world=2, timeout=60):
    """Run ``fn(out, *args, rank)`` on ``world`` gloo ranks; returns their exit codes."""
    port = _free_port()
    procs = [CONTEXT.Process(target=_rank_main, args=(i, world, port, out, fn, args)) for i in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank hung"
    return [p.exitcode for p in procs]


def solver_param(config, out, iter_size, max_iter, **fields):
    p = read_solver_param(GOLDEN / "solver" / config / "solver.prototxt")
    p.iter_size, p.max_iter, p.test_interval, p.snapshot = iter_size, max_iter, 0, 0
    p.snapshot_prefix = str(out / "snap")
    for name, value in fields.items():
        setattr(p, name, value)
    return p


def weights(solver):
    return {f"{lp.layer}.{lp.index}": lp.tensor.detach().numpy().copy() for lp in solver.params}


def _train(out, config, iter_size, max_iter, fields, rank, signalled=None):
    p = solver_param(config, out, iter_size, max_iter, **fields)
    distributed.seed(p, rank)
    solver = CaffeSolver(p, weights=INIT[config])
    distributed.attach(solver, rank)
    solver.handle_signals()
    if rank.rank == signalled:     # a signal that reaches this rank only
        signal.raise_signal(signal.SIGINT)
    solver.solve()
    np.savez(out / f"rank{rank.rank}.npz", iter=solver.iter, **weights(solver))


def _signalled_train(out, rank):
    _train(out, "sgd_step_caffenet", 1, 10, {"snapshot_after_train": True}, rank, signalled=1)


def train_alone(out, config, iter_size, max_iter, resume=None):
    solver = CaffeSolver(solver_param(config, out, iter_size, max_iter), weights=None if resume else INIT[config])
    solver.solve(resume)
    return solver


def assert_same_weights(actual, expected, what):
    assert set(actual) - {"iter"} == set(expected)
    for name, value in expected.items():
        assert_close(actual[name], value, rtol=2e-5, atol=2e-6, what=f"{what} {name}")


# ---- Caffe's semantics -------------------------------------------------------------------

@pytest.mark.parametrize("config, iter_size", [("sgd_step_caffenet", 1), ("adam_fixed", 1), ("sgd_step_caffenet", 2)])
def test_two_ranks_give_the_weights_of_one_process_with_twice_the_iter_size(tmp_path, monkeypatch, config,
                                                                            iter_size):
    assert run_ranks(_train, tmp_path, config, iter_size, 4, {}) == [0, 0]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    monkeypatch.chdir(GOLDEN)
    alone = weights(train_alone(tmp_path, config, 2 * iter_size, 4))
    for r, got in enumerate(ranks):
        assert int(got["iter"]) == 4
        assert_same_weights(dict(got), alone, f"{config} rank {r}")


def _read_labels(out, source, batches, rank):
    net = read_net_param(GOLDEN / "solver" / "mini_caffenet.prototxt")
    data = filter_net(net, caffe_pb2.NetState(phase=caffe_pb2.TRAIN))
    del data.layer[1:]
    data.layer[0].data_param.source, data.layer[0].data_param.batch_size = source, 4
    data.layer[0].transform_param.Clear()
    net = CaffeNet(data, seed=1)
    np.save(out / f"labels{rank.rank}.npy", np.concatenate([net()["label"].numpy() for _ in range(batches)]))


def test_each_record_goes_to_exactly_one_rank_in_each_pass(tmp_path):
    source = tmp_path / "nine_lmdb"
    env = lmdb.open(str(source), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(9):
            txn.put(f"{i:08d}".encode(), fileio.array_to_datum(np.zeros((1, 2, 2), np.uint8), i).SerializeToString())
    env.close()
    assert run_ranks(_read_labels, tmp_path, str(source), 9) == [0, 0]
    labels = [np.load(tmp_path / f"labels{r}.npy").astype(int) for r in range(2)]
    # rank r reads records r, r + 2, r + 4, ... of the endless stream 0..8, 0..8, ...
    assert labels[0].tolist() == [(2 * i) % 9 for i in range(36)]
    assert labels[1].tolist() == [(2 * i + 1) % 9 for i in range(36)]
    stream = np.stack(labels, 1).ravel()          # the records in Caffe's reading order
    for start in range(0, 72, 9):
        assert sorted(stream[start:start + 9].tolist()) == list(range(9))


def test_a_two_rank_solverstate_resumes_on_one_process(tmp_path, monkeypatch):
    two, alone = tmp_path / "two", tmp_path / "alone"
    two.mkdir(), alone.mkdir()
    assert run_ranks(_train, two, "sgd_step_caffenet", 1, 4, {"snapshot": 4}) == [0, 0]
    assert sorted(f.name for f in two.glob("snap_*")) == ["snap_iter_4.caffemodel", "snap_iter_4.solverstate"]
    monkeypatch.chdir(GOLDEN)
    train_alone(alone, "sgd_step_caffenet", 2, 4).snapshot()
    resumed = train_alone(two, "sgd_step_caffenet", 1, 6, resume=str(two / "snap_iter_4.solverstate"))
    reference = train_alone(alone, "sgd_step_caffenet", 1, 6, resume=str(alone / "snap_iter_4.solverstate"))
    assert resumed.iter == 6
    assert_same_weights(weights(resumed), weights(reference), "resumed")


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_iteration(tmp_path):
    assert run_ranks(_signalled_train, tmp_path) == [0, 0]
    assert [int(np.load(tmp_path / f"rank{r}.npz")["iter"]) for r in range(2)] == [1, 1]
    assert sorted(f.name for f in tmp_path.glob("snap_*")) == ["snap_iter_1.caffemodel", "snap_iter_1.solverstate"]


# ---- pycaffe's multi-process pattern (Caffe's python/train.py) -----------------------------

def _pycaffe_rank(rank, world, uid, out, config, max_iter):
    """One child process as Caffe's python/train.py runs it, on the CPU."""
    import protocaffe as caffe
    os.chdir(GOLDEN)
    torch.set_num_threads(1)
    caffe.set_mode_cpu()
    caffe.set_solver_count(world)
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    solver = caffe.get_solver(str(out / "solver.prototxt"))
    if rank == 0:  # the other ranks start from their own fillers: bcast makes them rank 0's
        solver.net.copy_from(INIT[config])
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    solver.net.after_backward(nccl)
    solver.step(max_iter)
    np.savez(out / f"rank{rank}.npz", iter=solver.iter, root=solver.solver.root, **weights(solver.solver))


def test_pycaffes_nccl_pattern_gives_the_weights_of_one_process_with_twice_the_iter_size(tmp_path,
                                                                                          monkeypatch):
    import protocaffe as caffe
    (tmp_path / "solver.prototxt").write_text(str(solver_param("sgd_step_caffenet", tmp_path, 1, 4)))
    uid = caffe.NCCL.new_uid()
    procs = [CONTEXT.Process(target=_pycaffe_rank, args=(r, 2, uid, tmp_path, "sgd_step_caffenet", 4))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    monkeypatch.chdir(GOLDEN)
    alone = weights(train_alone(tmp_path, "sgd_step_caffenet", 2, 4))
    for r in range(2):
        got = dict(np.load(tmp_path / f"rank{r}.npz"))
        assert int(got.pop("iter")) == 4 and bool(got.pop("root")) == (r == 0)
        assert_same_weights(got, alone, f"pycaffe rank {r}")


def test_solver_count_and_rank_outside_a_group_are_pycaffes_settings(monkeypatch):
    import protocaffe as caffe
    monkeypatch.setitem(distributed._SOLVERS, "count", 1)
    monkeypatch.setitem(distributed._SOLVERS, "rank", 0)
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    caffe.set_solver_count(4)
    caffe.set_solver_rank(0)
    assert (caffe.solver_count(), caffe.solver_rank()) == (4, 0)
    caffe.set_solver_rank(7)
    with pytest.raises(CaffeError, match="solver rank 7 is outside 0..3"):
        caffe.NCCL(type("S", (), {"device": torch.device("cpu"), "params": []})(), caffe.NCCL.new_uid())
    caffe.set_solver_rank(0)  # INFO logging back on


# ---- failures ----------------------------------------------------------------------------

def _die_at_iteration_2(out, rank):
    p = solver_param("sgd_step_caffenet", out, 1, 10)
    solver = CaffeSolver(p, weights=INIT["sgd_step_caffenet"])
    distributed.attach(solver, rank)
    agree = solver.take_request

    def take_request():
        if rank.rank == 1 and solver.iter == 2:
            os._exit(3)
        return agree()
    solver.take_request = take_request
    solver.solve()


def test_a_dying_rank_is_reported_by_rank_0_without_a_hang(tmp_path):
    codes = run_ranks(_die_at_iteration_2, tmp_path, timeout=40)
    assert codes[1] == 3
    error = (tmp_path / "error0.txt").read_text()
    assert error.startswith("rank 0: lost the other ranks (one died, or a collective timed out)")


def test_a_rank_that_never_comes_is_an_error_not_a_hang(tmp_path):
    port = _free_port()
    alone = CONTEXT.Process(target=_rank_main, args=(0, 2, port, tmp_path, _read_labels, (), 2))
    alone.start()
    alone.join(30)
    assert alone.exitcode == 0
    error = (tmp_path / "error0.txt").read_text()
    assert error.startswith(f"rank 0: could not meet the other ranks at 127.0.0.1:{port}: ")


def _exit_with_3_on_rank_1(rank):
    if rank.rank == 1:
        sys.exit(3)
    torch.distributed.barrier()


def test_launch_stops_the_job_and_names_the_rank_that_failed():
    with pytest.raises(CaffeError) as failed:
        distributed.launch(_exit_with_3_on_rank_1, (), [None, None], backend="gloo")
    # rank 1's exit (3) is named, or rank 0's (1) when rank 0 saw the loss while rank 1 was still
    # shutting down; either way one line, and the job ends instead of hanging
    assert re.fullmatch(r"(rank 0 \(device None\) exited with code 1; )?(rank 1 \(device None\) exited with "
                        r"code 3; )?the other ranks were stopped", str(failed.value))
    assert str(failed.value) != "the other ranks were stopped"


def test_device_lists_are_checked_before_anything_starts(golden_cwd, monkeypatch, capsys):
    solver = str(GOLDEN / "solver" / "sgd_step_caffenet" / "solver.prototxt")
    assert main(["train", "--solver", solver, "--gpu", "0,1"]) == 1
    assert capsys.readouterr().err == "protocaffe train: error: --gpu 0,1: no CUDA device is available on this machine\n"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main(["train", "--solver", solver, "--gpu", "0,2"]) == 1
    assert capsys.readouterr().err == ("protocaffe train: error: --gpu 0,2: there is no GPU 2; this machine "
                                       "has 2 CUDA device(s), numbered 0 to 1\n")
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    assert main(["train", "--solver", solver, "--gpu", "all"]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "protocaffe train: error: --gpu 0,1: training on several GPUs needs NCCL, which this PyTorch build")


# ---- the command, as torchrun starts it -----------------------------------------------------

def _cli_rank(index, world, port, out, argv):
    """One process as torchrun starts it: RANK, WORLD_SIZE, LOCAL_RANK in the environment."""
    os.chdir(GOLDEN)
    os.environ.update(RANK=str(index), WORLD_SIZE=str(world), LOCAL_RANK=str(index), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PROTOCAFFE_DATA_WORKERS="0")
    torch.set_num_threads(1)
    with open(out / f"log{index}.txt", "w") as log:
        os.dup2(log.fileno(), 2)
        sys.exit(main(argv))


def test_the_command_under_torchrun_logs_once_from_rank_0(tmp_path):
    p = solver_param("sgd_step_caffenet", tmp_path, 1, 3, test_interval=2, snapshot=3)
    p.test_iter[:] = [1]
    solver = tmp_path / "solver.prototxt"
    solver.write_text(str(p))
    argv = ["train", "--solver", str(solver), "--weights", INIT["sgd_step_caffenet"]]
    port = _free_port()
    procs = [CONTEXT.Process(target=_cli_rank, args=(i, 2, port, tmp_path, argv)) for i in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    logs = [(tmp_path / f"log{r}.txt").read_text() for r in range(2)]
    assert re.findall(r"\] Iteration (\d+) \(", logs[0]) == ["0", "1", "2"]
    assert len(re.findall(r"Testing net", logs[0])) == 2      # iterations 2 and 3
    assert "Rank 0 of 2, on cpu" in logs[0]
    assert logs[1] == ""
    assert sorted(f.name for f in tmp_path.glob("snap_*")) == ["snap_iter_3.caffemodel", "snap_iter_3.solverstate"]


def test_python_dash_m_protocaffe_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "protocaffe", "train", "--solver", "nope.prototxt"],
                          capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (1, "protocaffe train: error: nope.prototxt: no such file\n")
