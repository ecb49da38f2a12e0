"""LSTM, RNN, LSTMUnit and Python layers: BVLC Caffe's golden cases, the state carried between
passes, pycaffe modules loaded unchanged, and two nets that train."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import protocaffe
from conftest import GOLDEN, HAS_CUDA, assert_close
from protocaffe import net as netlib
from protocaffe.errors import CaffeError
from protocaffe.layer_types.python import PythonLayerError
from protocaffe.proto import caffe_pb2
from protocaffe.solver import get_solver

ROOT = Path(__file__).resolve().parent.parent
CASES = ["lstm", "lstm_static", "lstm_expose_hidden", "rnn", "rnn_static_expose", "lstm_unit",
         "python_euclidean", "python_param_str"]


@pytest.fixture
def one_thread():
    """Tiny nets run fastest on one thread (and steadiest on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_golden(folder, device="cpu"):
    """Forward, input gradients and parameter gradients of layer ``test`` against Caffe's io.npz."""
    io_ = np.load(folder / "io.npz")
    net = netlib.build_net(str(folder / "net.prototxt"), caffe_pb2.TEST,
                           weights=str(folder / "weights.caffemodel"), seed=1, device=device)
    layer = net.layer_by_name()["test"]
    params = sorted(k for k in io_.files if k.startswith("param_"))
    assert len(layer.blobs) == len(params)
    for i, blob in enumerate(layer.blobs):
        assert_close(blob.detach().cpu(), io_[f"param_{i}"], what=f"param {i}")
    inputs = {k[3:]: torch.from_numpy(io_[k]).to(device).requires_grad_(f"gin_{k[3:]}" in io_.files)
              for k in io_.files if k.startswith("in_")}
    blobs = net(**inputs)
    for key in (k for k in io_.files if k.startswith("out_")):
        assert_close(blobs[key[4:]].detach().cpu(), io_[key], what=key)
    tdiffs = {k[6:]: torch.from_numpy(io_[k]).to(device) for k in io_.files if k.startswith("tdiff_")}
    if tdiffs:
        torch.autograd.backward([blobs[n] for n in tdiffs], list(tdiffs.values()))
    else:
        net.loss(blobs).backward()
    for key in (k for k in io_.files if k.startswith("gin_")):
        grad = inputs[key[4:]].grad
        assert_close(torch.zeros(io_[key].shape) if grad is None else grad.cpu(), io_[key], what=key)
    for i, blob in enumerate(layer.blobs):
        assert_close(blob.grad.cpu(), io_[f"gparam_{i}"], what=f"gparam {i}")


@pytest.mark.parametrize("case", CASES)
def test_golden(case, monkeypatch):
    folder = GOLDEN / "layers2" / case
    monkeypatch.syspath_prepend(str(folder))  # the Python cases' modules sit beside the net
    check_golden(folder)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES)
def test_golden_cuda(case, monkeypatch):
    folder = GOLDEN / "layers2" / case
    monkeypatch.syspath_prepend(str(folder))
    check_golden(folder, "cuda")


# ---- recurrent layers ----------------------------------------------------------------------

def recurrent(type_, n_bottoms=2, expose=False, seed=0):
    """An LSTM or RNN layer for x (6, 2, 4) and cont (6, 2), num_output 3; every such layer
    built with the same seed has the same weights."""
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(n_bottoms))
    tops = " ".join(f'top: "t{i}"' for i in range(1 + (n_bottoms - 2 if expose else 0)))
    text = (f'name: "r" type: "{type_}" {bottoms} {tops} recurrent_param {{ num_output: 3 '
            f'expose_hidden: {str(expose).lower()} weight_filler {{ type: "gaussian" std: 0.5 }} '
            f'bias_filler {{ type: "gaussian" std: 0.5 }} }}')
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    ctx = netlib.BuildContext(generator=torch.Generator().manual_seed(seed))
    shapes = [(6, 2, 4), (6, 2)] + [(1, 2, 3)] * (n_bottoms - 2)
    return protocaffe.layer_types.LAYERS[type_](lp, shapes, ctx)


def sequence(seed=0):
    g = torch.Generator().manual_seed(seed)
    cont = torch.ones(6, 2)
    cont[0] = 0
    cont[4, 1] = 0  # stream 1 starts a new sequence at t = 4
    return torch.randn(6, 2, 4, generator=g), cont


@pytest.mark.parametrize("type_", ["LSTM", "RNN"])
def test_state_carries_over_to_the_next_pass(type_):
    """Without expose_hidden the last state starts the next pass: two halves give the whole."""
    x, cont = sequence()
    whole = recurrent(type_)(x, cont)
    halves = recurrent(type_)
    out = torch.cat([halves(x[:3], cont[:3]), halves(x[3:], cont[3:])])
    assert_close(out.detach(), whole.detach(), what="two passes vs one")
    restarted = cont[3:].clone()
    restarted[0] = 0
    assert_close(halves(x[3:], restarted).detach(), recurrent(type_)(x[3:], restarted).detach(),
                 what="cont 0 forgets the carried state")


@pytest.mark.parametrize("type_, n_states", [("LSTM", 2), ("RNN", 1)])
def test_exposed_states_continue_a_sequence(type_, n_states):
    x, cont = sequence(1)
    zeros = [torch.zeros(1, 2, 3)] * n_states
    whole = recurrent(type_, 2 + n_states, expose=True)(x, cont, *zeros)
    layer = recurrent(type_, 2 + n_states, expose=True)
    first = layer(x[:3], cont[:3], *zeros)
    second = layer(x[3:], cont[3:], *first[1:])
    assert_close(torch.cat([first[0], second[0]]).detach(), whole[0].detach(), what="output")
    for got, want in zip(second[1:], whole[1:]):
        assert_close(got.detach(), want.detach(), what="final state")


def test_cont_gets_no_gradient():
    x, cont = sequence()
    cont.requires_grad_(True)
    recurrent("LSTM")(x.requires_grad_(True), cont).sum().backward()
    assert cont.grad is None and x.grad.abs().sum() > 0


def test_recurrent_shape_errors_name_the_layer():
    lp = text_format.Parse('name: "lstm1" type: "LSTM" bottom: "x" bottom: "c" top: "h" '
                           'recurrent_param { num_output: 3 }', caffe_pb2.LayerParameter())
    with pytest.raises(CaffeError, match=r"lstm1.*cont.*\(5, 2\).*\(5, 3\)"):
        protocaffe.layer_types.LAYERS["LSTM"](lp, [(5, 2, 4), (5, 3)])


@pytest.mark.usefixtures("one_thread")
def test_lstm_learns_a_delayed_copy(monkeypatch):
    """The LSTM must remember x[t-1] to output it at t; predicting 0 would cost about 5.8."""
    monkeypatch.chdir(ROOT)
    solver = get_solver("examples/lstm_delay/solver.prototxt")
    solver.step(solver.param.max_iter)
    assert solver.smoothed_loss < 0.05


# ---- Python layers ---------------------------------------------------------------------------

def python_net(module, layer, bottoms=("x",), tops=("y",), extra="", phase=caffe_pb2.TEST):
    inputs = "".join(f'layer {{ name: "in_{b}" type: "Input" top: "{b}" '
                     f'input_param {{ shape {{ dim: 2 dim: 3 }} }} }}\n' for b in bottoms)
    text = inputs + (f'layer {{ name: "test" type: "Python" {" ".join(f"bottom: {b!r}" for b in bottoms)} '
                     f'{" ".join(f"top: {t!r}" for t in tops)} python_param {{ module: "{module}" '
                     f'layer: "{layer}" param_str: "7" }} {extra} }}').replace("'", '"')
    return netlib.build_net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def write_module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


RECORDER = """
    import caffe
    from caffe.proto import caffe_pb2

    class Recorder(caffe.Layer):
        def setup(self, bottom, top):
            self.seen = [("setup", self.param_str, self.phase)]

        def reshape(self, bottom, top):
            self.seen.append(("reshape",) + bottom[0].shape)
            top[0].reshape(bottom[0].num, 1)

        def forward(self, bottom, top):
            self.seen.append(("forward",) + bottom[0].shape)
            top[0].data[:, 0] = bottom[0].data.sum(axis=1)
"""


def test_pycaffe_module_runs_unchanged_with_caffe_as_protocaffe(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "recorder_a", RECORDER)
    net = python_net("recorder_a", "Recorder", phase=caffe_pb2.TRAIN)
    module = sys.modules["recorder_a"]
    assert module.caffe is protocaffe and module.caffe_pb2 is caffe_pb2
    impl = net.layer_by_name()["test"].impl
    x = torch.arange(15.0).reshape(5, 3)
    assert net(x=x)["y"].flatten().tolist() == [3.0, 12.0, 21.0, 30.0, 39.0]
    assert impl.seen == [("setup", "7", caffe_pb2.TRAIN), ("reshape", 2, 3),
                         ("reshape", 5, 3), ("forward", 5, 3)]


@pytest.fixture
def fresh_caffe_modules():
    """No ``caffe`` module imported during the test, and whatever it imported gone afterwards."""
    def caffe_modules():
        return {m: sys.modules.pop(m) for m in list(sys.modules) if m == "caffe" or m.startswith("caffe.")}
    saved = caffe_modules()
    yield
    caffe_modules()
    sys.modules.update(saved)


@pytest.mark.usefixtures("fresh_caffe_modules")
def test_a_real_pycaffe_is_never_shadowed(tmp_path, monkeypatch):
    real = tmp_path / "caffe"
    real.mkdir()
    (real / "__init__.py").write_text("class Layer:\n    def __init__(self, param):\n        pass\n")
    write_module(tmp_path, monkeypatch, "recorder_b", RECORDER.replace("from caffe.proto import caffe_pb2", ""))
    net = python_net("recorder_b", "Recorder")
    assert sys.modules["recorder_b"].caffe.__file__ == str(real / "__init__.py")
    assert net(x=torch.ones(2, 3))["y"].flatten().tolist() == [3.0, 3.0]


def test_user_errors_name_the_layer_and_keep_the_users_exception(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "faulty", """
        import caffe

        class Faulty(caffe.Layer):
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].shape)

            def forward(self, bottom, top):
                top[0].data[...] = bottom[0].data

            def backward(self, top, propagate_down, bottom):
                raise ValueError("no gradient today")
    """)
    net = python_net("faulty", "Faulty", extra="loss_weight: 1")  # a loss, so backward runs
    out = net(x=torch.ones(2, 3, requires_grad=True))["y"]
    with pytest.raises(PythonLayerError, match=r"layer 'test'.*module 'faulty'.*backward.*no gradient") as info:
        out.sum().backward()
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.__cause__.__traceback__.tb_next is not None  # the user's frames are kept


def test_missing_module_or_class_is_a_caffe_error(tmp_path, monkeypatch):
    with pytest.raises(CaffeError, match=r"layer 'test'.*'no_such_module'.*PYTHONPATH"):
        python_net("no_such_module", "X")
    write_module(tmp_path, monkeypatch, "empty_module", "")
    with pytest.raises(CaffeError, match=r"layer 'test'.*'empty_module' has no class 'Missing'"):
        python_net("empty_module", "Missing")


def test_python_layer_has_no_default_loss_weight(monkeypatch):
    monkeypatch.syspath_prepend(str(GOLDEN / "layers2" / "python_euclidean"))
    args = ("pyloss", "EuclideanLossLayer", ("a", "b"), ("loss",))
    assert python_net(*args).loss_tops() == {}
    assert python_net(*args, extra="loss_weight: 2").loss_tops() == {"loss": 2.0}


def test_protocaffe_train_with_a_python_euclidean_loss():
    """examples/python_layer: a pycaffe-style loss module fits a linear map with `protocaffe train`."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "examples" / "python_layer")]))
    run = subprocess.run([sys.executable, "-m", "protocaffe.cli", "train",
                          "--solver", "examples/python_layer/solver.prototxt"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    losses = [float(v) for v in re.findall(r"Iteration \d+.*loss = (\S+)", run.stderr)]
    assert losses[0] > 1.0 and losses[-1] < 1e-3, losses
