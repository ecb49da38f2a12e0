"""The command line: each subcommand, Caffe's flag spellings, bad input, logs Caffe's tools parse."""
import re
import shutil
import subprocess
import sys

import pytest

from conftest import GOLDEN, HAS_CUDA
from protocaffe.cli import main

# the regular expressions of Caffe's tools/extra/parse_log.py
PARSE_LOG = {
    "iteration": re.compile(r"Iteration (\d+)"),
    "train_loss": re.compile(r"Iteration (\d+) \(.*\), loss = ([\.\deE+-]+)"),
    "lr": re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)"),
    "output": re.compile(r"(Test|Train) net output #(\d+): (\S+) = ([\.\deE+-]+)"),
    "glog": re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] "),
}


def solver_copy(tmp_path, config="sgd_step_caffenet"):
    text = (GOLDEN / "solver" / config / "solver.prototxt").read_text()
    text = re.sub(r'snapshot_prefix: ".*"', f'snapshot_prefix: "{tmp_path}/snap"', text)
    path = tmp_path / "solver.prototxt"
    path.write_text(text)
    return path


def test_train_writes_caffe_parsable_log_and_snapshots(golden_cwd, tmp_path, capsys):
    solver = solver_copy(tmp_path)
    assert main(["train", f"--solver={solver}", "-weights", "solver/init_mini_caffenet.caffemodel",
                 "--log_dir", str(tmp_path / "logs")]) == 0
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l]
    # as in Caffe's logs, only the printed solver and net definitions span several lines
    assert all(PARSE_LOG["glog"].match(l) for l in lines if "Iteration" in l or "net output" in l)
    train = [m for m in map(PARSE_LOG["train_loss"].search, lines) if m]
    assert [int(m[1]) for m in train] == list(range(20))
    assert len([m for m in map(PARSE_LOG["lr"].search, lines) if m]) == 20
    outputs = [m for m in map(PARSE_LOG["output"].search, lines) if m]
    assert {m[1] for m in outputs} == {"Test", "Train"}
    assert (tmp_path / "snap_iter_10.caffemodel").exists() and (tmp_path / "snap_iter_20.solverstate").exists()
    logfile = next((tmp_path / "logs").iterdir())
    assert "Optimization Done." in logfile.read_text()


def test_train_resume_and_both_flags(golden_cwd, tmp_path, capsys):
    solver = solver_copy(tmp_path)
    state = GOLDEN / "solver" / "sgd_step_caffenet" / "caffe_snapshots" / "mini_caffenet_iter_10.solverstate"
    assert main(["train", "--solver", str(solver), "--snapshot", str(state)]) == 0
    assert "Iteration 10, Testing net (#0)" in capsys.readouterr().err
    assert main(["train", "--solver", str(solver), "--snapshot", str(state), "--weights", "x.caffemodel"]) == 1
    assert "not both" in capsys.readouterr().err


def test_train_errors_are_one_line(golden_cwd, tmp_path, capsys):
    assert main(["train", "--solver", "nope.prototxt"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["protocaffe train: error: nope.prototxt: no such file"]
    bad = tmp_path / "bad_solver.prototxt"
    bad.write_text('net: "solver/mini_caffenet.prototxt"\nbase_lr: 0.1\nlr_polcy: "fixed"\n')
    assert main(["train", "--solver", str(bad)]) == 1
    assert f"{bad}:3:1:" in capsys.readouterr().err
    netfile = tmp_path / "net.prototxt"
    netfile.write_text((GOLDEN / "solver" / "mini_caffenet.prototxt").read_text().replace('"LRN"', '"LRNN"'))
    good = tmp_path / "s2.prototxt"
    good.write_text(f'net: "{netfile}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\n')
    assert main(["train", "--solver", str(good)]) == 1
    assert "layer 'norm1' has type 'LRNN'" in capsys.readouterr().err
    assert main(["train", "--solver", str(good), "--gpu", "0,1"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_test_reproduces_caffe_test_log(golden_cwd, capsys):
    weights = "solver/sgd_step_alexnet/caffe_snapshots/mini_alexnet_iter_20.caffemodel"
    assert main(["test", "-model", "solver/mini_alexnet.prototxt", "-weights", weights, "-iterations", "5"]) == 0
    ours = [l.split("] ", 1)[1] for l in capsys.readouterr().err.splitlines() if "] " in l]
    theirs = [l.split("] ", 1)[1] for l in (GOLDEN / "solver" / "sgd_step_alexnet" / "caffe_test.log").read_text().splitlines()
              if "] " in l]
    wanted = [l for l in theirs if l.startswith(("Batch ", "Loss: ", "accuracy = ", "loss = "))]
    got = [l for l in ours if l.startswith(("Batch ", "Loss: ", "accuracy = ", "loss = "))]
    assert got == wanted


def test_test_needs_weights(golden_cwd, capsys):
    assert main(["test", "--model", "solver/mini_alexnet.prototxt"]) == 1
    assert "need model weights" in capsys.readouterr().err


def test_time_prints_caffes_summary(golden_cwd, capsys):
    assert main(["time", "--model", "solver/mini_caffenet.prototxt", "--iterations", "2"]) == 0
    err = capsys.readouterr().err
    for line in ("Average Forward pass: ", "Average Backward pass: ", "Average Forward-Backward: "):
        assert re.search(line + r"[\d.e+-]+ ms\.", err)
    assert re.search(r"conv1\tforward: [\d.e+-]+ ms\.", err)


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
def test_device_query_without_cuda(capsys):
    assert main(["device_query"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_device_query_with_cuda(capsys):
    assert main(["device_query", "--gpu", "0"]) == 0
    assert "Name:" in capsys.readouterr().err


def test_console_script_exit_codes(tmp_path):
    assert shutil.which("protocaffe"), "the console script is installed"
    done = subprocess.run(["protocaffe", "test", "--model", str(tmp_path / "none.prototxt"), "--weights", "w"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert subprocess.run([sys.executable, "-m", "protocaffe.cli", "frobnicate"], capture_output=True).returncode == 2
