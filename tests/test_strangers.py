"""Models from strangers and machines that fail: a net too large for the memory, Python layers
(logged, or refused), protobuf's limits, and a snapshot the disk cannot hold. Each ends as
one line through the command line and the same CaffeError through the API."""
import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import protocaffe
from conftest import GOLDEN, cuda
from test_user_errors import api_message, cli_line
from protocaffe import fileio, memory
from protocaffe.cli import main
from protocaffe.errors import CaffeError
from protocaffe.layer_types.python import NO_PYTHON_LAYERS
from protocaffe.proto import caffe_pb2
from protocaffe.solver import CaffeSolver

ROOT = GOLDEN.parents[2]


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


# ---- a net larger than the machine ---------------------------------------------------------------

HUGE_INPUT = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 100000 dim: 100000 dim: 100000 dim: 3 } } }\n'
HUGE_WEIGHTS = """\
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 100000 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4000000000 } }
    """


@pytest.mark.parametrize("text, expected", [
    (HUGE_INPUT, "layer 'in' (type Input): top 'x' (100000x100000x100000x3): 10.7 PiB, which brings the net's "
                 "blobs and parameters to 10.7 PiB: more than the "),
    (HUGE_WEIGHTS, "layer 'ip' (type InnerProduct): parameter weight (4000000000x100000): 1.4 PiB, which brings "
                   "the net's blobs and parameters to 1.4 PiB: more than the "),
], ids=["tops", "parameters"])
def test_a_net_larger_than_the_memory_is_refused_naming_the_layer(tmp_path, capsys, text, expected):
    net = write(tmp_path / "net.prototxt", text)
    message = cli_line(["time", "--model", net], capsys)
    assert message.startswith(expected) and message.endswith("of memory available on the CPU")
    assert api_message(protocaffe.Net, net, protocaffe.TEST) == message


@cuda
def test_on_cuda_the_limit_is_the_devices_free_memory(tmp_path):
    import torch
    free = torch.cuda.mem_get_info(0)[0]
    assert abs(memory.available(torch.device("cuda", 0)) - free) < 2**30
    net = write(tmp_path / "net.prototxt", HUGE_INPUT)
    with pytest.raises(CaffeError, match=r"layer 'in' \(type Input\): .* of memory available on cuda:0$"):
        protocaffe.build_net(net, device=torch.device("cuda", 0))


def test_the_budget_sums_new_tops_and_parameters_but_not_in_place_ones(monkeypatch):
    """1000 bytes: the input (800) fits, the in-place ReLU adds nothing, the Sigmoid's new top (800) does not."""
    monkeypatch.setattr(memory, "available", lambda device: 1000)
    text = """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 100 } } }
        layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
        layer { name: "sig" type: "Sigmoid" bottom: "x" top: "y" }
        """
    with pytest.raises(CaffeError) as error:
        protocaffe.build_net(fileio.parse_text(text, caffe_pb2.NetParameter))
    assert str(error.value) == ("layer 'sig' (type Sigmoid): top 'y' (2x100): 800 bytes, which brings the net's "
                                "blobs and parameters to 1.6 KiB: more than the 1000 bytes of memory available "
                                "on the CPU")


def test_available_memory_is_read_from_the_machine():
    free = memory.available("cpu")
    assert free is not None and free > 0
    if os.path.exists("/proc/meminfo"):  # Linux: at most all of the memory and swap
        total = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in open("/proc/meminfo")}
        assert free <= total["MemTotal"] + total.get("SwapTotal", 0)
    assert memory.available("meta") is None  # nothing is allocated there: nothing to check
    assert [memory.human(n) for n in (5, 1536, 3 * 2**30, 2**62)] == ["5 bytes", "1.5 KiB", "3.0 GiB", "4.0 EiB"]


# ---- Python layers ---------------------------------------------------------------------------------

PY_NET = """\
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
    layer { name: "py" type: "Python" bottom: "x" top: "y" python_param { module: "stranger" layer: "Copy" } }
    """
PY_MODULE = """\
    import pathlib
    pathlib.Path(__file__).with_name("imported").touch()  # what a stranger's code could do
    import caffe

    class Copy(caffe.Layer):
        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = bottom[0].data
    """


@pytest.fixture
def stranger(tmp_path, monkeypatch):
    """A net whose Python layer imports tmp_path/stranger.py, which leaves a file when it runs."""
    write(tmp_path / "stranger.py", PY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "stranger", raising=False)
    monkeypatch.delenv(NO_PYTHON_LAYERS, raising=False)
    return write(tmp_path / "net.prototxt", PY_NET)


def test_a_python_layer_logs_the_file_it_imports(stranger, tmp_path, logged):
    protocaffe.Net(stranger, protocaffe.TEST)
    assert f"Layer 'py' (type Python) imports module 'stranger' from {tmp_path / 'stranger.py'}" in logged.text
    assert (tmp_path / "imported").exists()


REFUSED = ("layer 'py' (type Python): refused: it would import python_param.module 'stranger', and Python "
           "layers are turned off (--no_python_layers, or PROTOCAFFE_NO_PYTHON_LAYERS=1)")


def test_no_python_layers_refuses_before_importing(stranger, tmp_path, capsys, monkeypatch):
    assert cli_line(["--no_python_layers", "time", "--model", stranger], capsys) == REFUSED
    assert cli_line(["time", "--model", stranger, "-no_python_layers"], capsys) == REFUSED
    assert NO_PYTHON_LAYERS not in os.environ  # the flag holds for its command only
    monkeypatch.setenv(NO_PYTHON_LAYERS, "1")
    assert api_message(protocaffe.Net, stranger, protocaffe.TEST) == REFUSED
    assert not (tmp_path / "imported").exists() and "stranger" not in sys.modules
    monkeypatch.setenv(NO_PYTHON_LAYERS, "0")
    protocaffe.Net(stranger, protocaffe.TEST)
    assert (tmp_path / "imported").exists()


# ---- protobuf's limits -------------------------------------------------------------------------------

def test_a_file_over_2_gib_is_refused_before_it_is_read(tmp_path, capsys):
    net = write(tmp_path / "net.prototxt", PY_NET.split("\n")[0] + "\n")
    big = tmp_path / "big.caffemodel"
    with open(big, "wb") as f:
        f.truncate(2**31)  # sparse: no disk is used
    message = cli_line(["time", "--model", net, "--weights", str(big)], capsys)
    assert message == (f"{big}: cannot read 2147483648 bytes as one protobuf message; protobuf (and Caffe) "
                       "hold at most 2147483647 bytes (2 GiB)")
    assert api_message(protocaffe.Net, net, str(big), protocaffe.TEST) == message
    assert api_message(fileio.read_binary, big, caffe_pb2.BlobProto) == message


def test_a_message_over_2_gib_is_refused_before_it_is_written(tmp_path):
    class Huge:
        def ByteSize(self):  # noqa: N802 (protobuf's name)
            return 2**31 + 5

        def SerializeToString(self):  # noqa: N802
            raise AssertionError("not reached")
    with pytest.raises(CaffeError, match=r"w.caffemodel: cannot write 2147483653 bytes as one protobuf message"):
        fileio.write_binary(Huge(), tmp_path / "w.caffemodel")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, data, expected", [
    ("deep.caffemodel", b"\xa3\x3e" * 200_000 + b"\xa4\x3e" * 200_000, "deep.caffemodel: not a valid binary NetParameter"),
    ("deep.prototxt", b"layer { " * 200_000 + b"}" * 200_000, "deep.prototxt:1:9: Message type \"caffe.LayerParameter\" "
                                                               "has no field named \"layer\"."),
], ids=["binary groups nested 200,000 deep", "prototxt nested 200,000 deep"])
def test_deep_nesting_is_one_line(tmp_path, capsys, name, data, expected):
    (tmp_path / name).write_bytes(data)
    net = write(tmp_path / "net.prototxt", PY_NET.split("\n")[0] + "\n")
    argv = ["time", "--model", str(tmp_path / name)] if name.endswith("prototxt") else \
        ["time", "--model", net, "--weights", str(tmp_path / name)]
    message = cli_line(argv, capsys)
    assert message.startswith(f"{tmp_path / name}") and expected in message
    args = (str(tmp_path / name), protocaffe.TEST) if name.endswith("prototxt") else (net, str(tmp_path / name), protocaffe.TEST)
    assert api_message(protocaffe.Net, *args) == message


# ---- a snapshot the disk cannot hold -------------------------------------------------------------------

SNAP_NET = """\
    layer { name: "d" type: "DummyData" top: "x" top: "t" dummy_data_param { shape { dim: 4 dim: 64 }
            shape { dim: 4 dim: 16 } data_filler { type: "gaussian" std: 1 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.1 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
    """
SNAP_SOLVER = """\
    net: "{tmp}/net.prototxt" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: 2 snapshot: 2
    snapshot_prefix: "{tmp}/snap" random_seed: 1 solver_mode: CPU
    """
FILE_LIMIT = 1024  # bytes: less than either snapshot file (each about 4.3 KB)
API_SCRIPT = """\
import sys, protocaffe
try:
    protocaffe.get_solver(sys.argv[1]).solve()
except protocaffe.CaffeError as e:
    print(e)
"""


def _limited(args, cwd):
    """Run ``python args`` with files limited to FILE_LIMIT bytes (a full disk), SIGXFSZ ignored."""
    def limit():
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)


def test_a_snapshot_that_cannot_be_written_is_one_line_and_keeps_the_previous_one(tmp_path):
    write(tmp_path / "net.prototxt", SNAP_NET)
    solver = write(tmp_path / "solver.prototxt", SNAP_SOLVER.format(tmp=tmp_path))
    assert main(["train", "--solver", solver]) == 0
    model, state = tmp_path / "snap_iter_2.caffemodel", tmp_path / "snap_iter_2.solverstate"
    before = {p: p.read_bytes() for p in (model, state)}
    assert all(len(b) > FILE_LIMIT for b in before.values())

    run = _limited(["-m", "protocaffe", "train", "--solver", solver], tmp_path)  # the same run again
    assert run.returncode == 1
    ours = [line for line in run.stderr.splitlines() if line.startswith("protocaffe ")]
    assert "Traceback" not in run.stderr and ours == [
        f"protocaffe train: error: {model}: cannot write: File too large"]
    api = _limited(["-c", API_SCRIPT, solver], tmp_path)
    assert api.stdout == f"{model}: cannot write: File too large\n"

    assert {p: p.read_bytes() for p in (model, state)} == before  # the previous pair, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt", "snap_iter_2.caffemodel",
                                                          "snap_iter_2.solverstate", "solver.prototxt"]
    resumed = CaffeSolver(solver)
    resumed.restore(str(state))
    assert resumed.iter == 2
    weights = fileio.read_binary(model, caffe_pb2.NetParameter)
    ip = next(layer for layer in weights.layer if layer.name == "ip")
    np.testing.assert_array_equal(resumed.net.layer_by_name()["ip"].weight.detach().numpy(),
                                  fileio.blob_to_array(ip.blobs[0]))
