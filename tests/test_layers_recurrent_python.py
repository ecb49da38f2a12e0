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


# ---- Python layers with learnable blobs --------------------------------------------------------

CHANNEL_SCALE = """
    import caffe

    class ChannelScale(caffe.Layer):
        \"\"\"top = bottom * scale[c] for (N, C, H, W); scale is a learnable blob set to param_str.\"\"\"

        def setup(self, bottom, top):
            self.blobs.add_blob(bottom[0].channels)
            self.blobs[0].data[...] = float(self.param_str)

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].shape)

        def forward(self, bottom, top):
            top[0].data[...] = bottom[0].data * self.blobs[0].data[:, None, None]

        def backward(self, top, propagate_down, bottom):
            self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(axis=(0, 2, 3))
            if propagate_down[0]:
                bottom[0].diff[...] = top[0].diff * self.blobs[0].data[:, None, None]
"""


def channel_scale(name="py", param=""):
    """A ChannelScale Python layer on x, its blob set to 1.5, top y_<name>."""
    return (f'layer {{ name: "{name}" type: "Python" bottom: "x" top: "y_{name}" {param} '
            f'python_param {{ module: "channel_scale" layer: "ChannelScale" param_str: "1.5" }} }}\n')


def scale_layer(param=""):
    """Caffe's Scale layer 'sc' on x (its scale blob filled with 1), top y_sc."""
    return f'layer {{ name: "sc" type: "Scale" bottom: "x" top: "y_sc" {param} }}\n'


# no loss in these nets: force_backward so that Caffe's rule runs every layer's backward
SCALE_INPUT = ('force_backward: true\nlayer { name: "in" type: "Input" top: "x" '
               'input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n')


@pytest.mark.parametrize("host_copies", [False, True], ids=["views", "host_copies"])
def test_python_layer_blob_matches_the_scale_layer(tmp_path, monkeypatch, host_copies):
    """host_copies: blobs synced through host copies, the path a GPU takes."""
    write_module(tmp_path, monkeypatch, "channel_scale", CHANNEL_SCALE)
    monkeypatch.setattr(protocaffe.Blob, "host_copies_on_cpu", host_copies)
    text = SCALE_INPUT + channel_scale() + scale_layer()
    net = netlib.build_net(text_format.Parse(text, caffe_pb2.NetParameter()))
    py, sc = net.layer_by_name()["py"], net.layer_by_name()["sc"]
    assert py.blob_names == ("blob0",) and py.blobs[0].tolist() == [1.5, 1.5, 1.5]  # setup wrote it
    with torch.no_grad():
        for layer in (py, sc):
            layer.blobs[0].copy_(torch.tensor([0.5, -2.0, 3.0]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, requires_grad=True)
    top_diff = torch.randn(2, 3, 4, 5, generator=g)
    out = net(x=x)
    assert_close(out["y_py"].detach(), out["y_sc"].detach(), what="forward")
    gx_py, = torch.autograd.grad(out["y_py"], x, top_diff, retain_graph=True)
    gx_sc, = torch.autograd.grad(out["y_sc"], x, top_diff)
    assert_close(gx_py, gx_sc, what="bottom diff")
    for _ in range(2):  # param diffs accumulate over passes, as Caffe's do until the solver clears them
        out = net(x=x)
        torch.autograd.backward([out["y_py"], out["y_sc"]], [top_diff, top_diff])
    assert_close(py.blobs[0].grad, sc.blobs[0].grad, what="param diff")
    assert_close(py.blobs[0].grad, 2 * (top_diff * x).detach().sum((0, 2, 3)), what="param diff by hand")


def test_solver_trains_a_python_layer_blob_as_a_scale_layer(tmp_path, monkeypatch):
    """Two nets alike but for the layer: the Python blob follows the Scale blob step by step
    (lr_mult, decay_mult, momentum), towards the target scale 2, and the loss falls."""
    write_module(tmp_path, monkeypatch, "channel_scale", CHANNEL_SCALE)
    monkeypatch.chdir(tmp_path)
    param = 'param { lr_mult: 2 decay_mult: 0.5 }'
    data = ('layer { name: "data" type: "DummyData" top: "x" dummy_data_param { shape { dim: 4 dim: 3 '
            'dim: 2 dim: 2 } data_filler { type: "gaussian" std: 1 } } }\n'
            'layer { name: "target" type: "Power" bottom: "x" top: "t" power_param { scale: 2 } }\n')
    solvers = {}
    for name, layers in (("py", channel_scale(param=param)), ("sc", scale_layer(param))):
        loss = f'layer {{ name: "loss" type: "EuclideanLoss" bottom: "y_{name}" bottom: "t" top: "loss" }}'
        text = ('base_lr: 0.1 momentum: 0.5 weight_decay: 0.01 lr_policy: "fixed" max_iter: 30 random_seed: 3 '
                f'solver_mode: CPU snapshot_after_train: false net_param {{ {data}{layers}{loss} }}')
        solvers[name] = get_solver(text_format.Parse(text, caffe_pb2.SolverParameter()))
    with torch.no_grad():
        solvers["py"].net.layer_by_name()["py"].blobs[0].fill_(1.0)  # as Scale's default filler
    losses = []
    for solver in solvers.values():
        solver.step(1)
        losses.append(solver.smoothed_loss)
        solver.step(29)
        losses.append(solver.smoothed_loss)
    py, sc = (s.net.layer_by_name()[n].blobs[0].detach() for n, s in solvers.items())
    assert_close(py, sc, what="Python blob vs Scale blob after 30 iterations")
    assert_close(losses[:2], losses[2:], what="losses")
    assert (py - 2).abs().max() < 0.05 and losses[1] < 0.01 * losses[0], (py, losses)


def test_python_layer_blobs_save_and_load_through_pycaffe(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "channel_scale", CHANNEL_SCALE)
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(SCALE_INPUT + channel_scale() + scale_layer())
    net = protocaffe.Net(str(prototxt), protocaffe.TEST)
    assert list(net.params) == ["py", "sc"]
    net.params["py"][0].data[...] = [0.25, 4.0, -1.0]
    net.save(str(tmp_path / "w.caffemodel"))
    saved = caffe_pb2.NetParameter.FromString((tmp_path / "w.caffemodel").read_bytes())
    blobs = {lp.name: lp.blobs for lp in saved.layer}
    assert list(blobs["py"][0].shape.dim) == [3] and list(blobs["py"][0].data) == [0.25, 4.0, -1.0]
    loaded = protocaffe.Net(str(prototxt), protocaffe.TEST)
    assert loaded.params["py"][0].data.tolist() == [1.5, 1.5, 1.5]
    loaded.copy_from(str(tmp_path / "w.caffemodel"))
    loaded.params["sc"][0].data[...] = [0.25, 4.0, -1.0]
    assert loaded.params["py"][0].data.tolist() == [0.25, 4.0, -1.0]
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    out = loaded.forward(x=x)
    assert_close(out["y_py"], out["y_sc"], what="forward after copy_from")
    loaded.backward(y_py=np.ones_like(x), y_sc=np.ones_like(x))
    assert_close(loaded.params["py"][0].diff, loaded.params["sc"][0].diff, what="pycaffe param diff")
    assert_close(loaded.params["py"][0].diff, x.sum((0, 2, 3)), what="pycaffe param diff by hand")


def test_python_layers_share_a_blob_by_param_name(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "channel_scale", CHANNEL_SCALE)
    shared = 'param { name: "s" }'
    text = SCALE_INPUT + channel_scale("py", shared) + channel_scale("py2", shared)
    net = netlib.build_net(text_format.Parse(text, caffe_pb2.NetParameter()))
    layers = net.layer_by_name()
    assert layers["py"].blobs[0] is layers["py2"].blobs[0] and len(net.learnable) == 1
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    out = net(x=x)
    (out["y_py"].sum() + 2 * out["y_py2"].sum()).backward()
    assert_close(layers["py"].blobs[0].grad, 3 * x.sum((0, 2, 3)), what="shared param diff")
