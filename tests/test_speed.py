"""Speed settings (protocaffe/speed.py): precision, fp32 islands, fp16 loss scaling, no
synchronization in the training loop, compilation. Speed itself is measured by
tools/bench_net.py and tools/bench_train.py, not here."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from torch.utils._python_dispatch import TorchDispatchMode

import protocaffe
from conftest import GOLDEN, HAS_CUDA, cuda
from protocaffe import net as netlib
from protocaffe.cli import main
from protocaffe.commands.time import needing_gradients
from protocaffe.proto import caffe_pb2
from protocaffe.solver import CaffeSolver
from protocaffe.speed import LossScaler, Speed

NETS = GOLDEN / "nets"
ROOT = GOLDEN.parents[2]

TRAIN_NET = """
layer { name: "data" type: "DummyData" top: "x" top: "label" dummy_data_param {
        shape { dim: 4 dim: 3 dim: 12 dim: 12 } shape { dim: 4 }
        data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param {
        num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "norm" type: "LRN" bottom: "c" top: "n" lrn_param { local_size: 3 } }
layer { name: "pool" type: "Pooling" bottom: "n" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "p" top: "fc" inner_product_param {
        num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def solver_param(**fields):
    p = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, lr_policy="fixed", max_iter=3,
                                  display=0, random_seed=1, snapshot_after_train=False,
                                  solver_mode=caffe_pb2.SolverParameter.CPU, **fields)
    text_format.Parse(TRAIN_NET, p.net_param)
    return p


def slim_caffenet():
    ref = np.load(NETS / "slim_caffenet.npz")
    net = netlib.build_net(str(NETS / "slim_caffenet_deploy.prototxt"), protocaffe.TEST,
                           weights=str(NETS / "slim_caffenet.caffemodel"))
    return net, torch.from_numpy(ref["blob_data"])


def test_bf16_forward_of_caffenet_within_tolerance_of_fp32():
    """Caffe's slim CaffeNet on its fixture image: bf16 logits within 3% (relative L2 norm) of fp32,
    the same top class, probabilities within 0.02."""
    net, data = slim_caffenet()
    with torch.no_grad():
        exact = net(data=data)
        speed = Speed("bf16").prepare(net) and Speed("bf16")
        with speed.autocast(torch.device("cpu")):
            low = net(data=data)
    assert low["fc8"].dtype == torch.bfloat16 and low["prob"].dtype == torch.float32
    rel = float((low["fc8"].float() - exact["fc8"]).norm() / exact["fc8"].norm())
    assert rel < 0.03
    assert torch.equal(low["prob"].argmax(1), exact["prob"].argmax(1))
    assert float((low["prob"] - exact["prob"]).abs().max()) < 0.02


def test_bf16_keeps_fp32_layers_and_fp32_weights_and_gradients():
    net, data = slim_caffenet()
    speed = Speed("bf16")
    speed.prepare(net)
    first = {}
    with speed.autocast(torch.device("cpu")):
        blobs, _ = net.run({"data": data}, first)
    assert blobs["conv1"].dtype == torch.bfloat16
    assert first["norm1"].dtype == torch.float32 and blobs["prob"].dtype == torch.float32
    blobs["prob"].sum().backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in net.parameters())
    assert net.layers["conv1"].weight.is_contiguous()  # NCHW on the CPU: NHWC measured slower


def test_channels_last_on_request_and_on_cuda():
    assert Speed("bf16", channels_last=True).use_channels_last(torch.device("cpu"))
    assert Speed().use_channels_last(torch.device("cuda"))
    net, data = slim_caffenet()
    exact = net(data=data)["prob"]
    Speed(channels_last=True).prepare(net)
    assert net.layers["conv1"].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(net(data=data)["prob"], exact, rtol=1e-4, atol=1e-6)


def test_fp32_settings_leave_the_net_as_it_is():
    net, data = slim_caffenet()
    before = net(data=data)["prob"]
    Speed().prepare(net)
    assert net.layers["conv1"].weight.is_contiguous()
    assert not hasattr(net.layers["prob"].forward, "keeps_fp32")
    assert torch.equal(net(data=data)["prob"], before)


def train_example(folder, data, precision):
    """The example's net and solver shortened to 800 iterations (lr / 10 at 600); test accuracy
    before and after. At 400 iterations accuracy is still climbing steeply and bf16's rounding
    moves it by more than 0.1 on some seeds; after the step both runs sit near their plateau."""
    from protocaffe.solver import read_solver_param
    text = (ROOT / "examples/shapes/train_val.prototxt").read_text().replace("examples/shapes/data", str(data))
    (folder / "net.prototxt").write_text(text)
    p = read_solver_param(ROOT / "examples/shapes/solver.prototxt")
    p.net, p.precision = str(folder / "net.prototxt"), precision
    p.max_iter, p.test_interval, p.display = 800, 800, 0
    del p.stepvalue[:]
    p.stepvalue.append(600)
    p.test_iter[0] = 6  # all 600 validation images: a 0.1 difference is then over 3 standard errors
    p.snapshot_prefix = str(folder / "snap")
    solver = CaffeSolver(p)
    before = solver.test(0)["accuracy"]
    solver.solve()
    assert all(lp.tensor.dtype == torch.float32 for lp in solver.params)  # fp32 master weights
    return before, solver.test(0)["accuracy"]


@pytest.mark.slow
def test_bf16_training_of_the_example_learns_like_fp32(tmp_path):
    from protocaffe.datasets.shapes import make_shapes
    data = tmp_path / "data"
    make_shapes(str(data), train=600, val=600, size=64, seed=3)
    results = {}
    for precision in ("fp32", "bf16"):
        (tmp_path / precision).mkdir()
        results[precision] = train_example(tmp_path / precision, data, precision)
    (before32, after32), (before16, after16) = results["fp32"], results["bf16"]
    assert after32 >= 0.6 and after32 > before32 + 0.4  # the shortened schedule learns
    assert after16 > before16 + 0.4 and abs(after16 - after32) <= 0.1, results


class Reads(TorchDispatchMode):
    """Counts read-backs from tensors to Python numbers (each a device synchronization)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_read_nothing_back_between_displays(precision, monkeypatch):
    # labels on the CPU are range-checked every batch (a host read, no device to wait for);
    # on a GPU that check runs only under --debug, so leave it out of the count here
    monkeypatch.setattr("protocaffe.layer_types.loss._check_labels", lambda *args: None)
    solver = CaffeSolver(solver_param(precision=precision))
    solver.step(1)
    with Reads() as reads:
        solver.step(3)
    assert reads.count == 0
    solver.param.display = 1
    with Reads() as reads:
        solver.step(1)
    assert reads.count > 0  # a display reads the loss


def test_fp16_overflow_skips_the_update_and_lowers_the_scale():
    solver = CaffeSolver(solver_param(precision="fp16"))
    scaler = solver.speed.scaler
    scaler.scale.fill_(2.0 ** 100)  # the scaled gradients overflow in fp16
    before = [lp.tensor.detach().clone() for lp in solver.params]
    solver.step(1)
    assert float(scaler.scale) == 2.0 ** 99
    assert all(torch.equal(a, lp.tensor) for a, lp in zip(before, solver.params))
    scaler.scale.fill_(1024.0)
    solver.step(1)
    assert any(not torch.equal(a, lp.tensor) for a, lp in zip(before, solver.params))


def test_loss_scaler_unscales_and_grows_as_grad_scaler():
    scaler = LossScaler(torch.device("cpu"), init=8.0, interval=2)
    grads = [torch.tensor([8.0, -16.0])]
    assert scaler.unscale(grads) and torch.equal(grads[0], torch.tensor([1.0, -2.0]))
    assert float(scaler.scale) == 8.0
    scaler.unscale([torch.tensor([8.0])])
    assert float(scaler.scale) == 16.0  # two finite steps: doubled


def slim_caffenet_deploy():
    """The slim CaffeNet without the golden file's force_backward: a plain deploy net."""
    param = text_format.Parse((NETS / "slim_caffenet_deploy.prototxt").read_text(), caffe_pb2.NetParameter())
    param.ClearField("force_backward")
    return netlib.build_net(param, caffe_pb2.TEST, seed=1)


def time_net(extra=""):
    param = text_format.Parse(extra + TRAIN_NET, caffe_pb2.NetParameter())
    return netlib.build_net(param, caffe_pb2.TRAIN, seed=1)


def test_time_takes_caffes_backward_decisions():
    # a net with a loss: every bottom but the data's (and the labels', which the loss layer
    # never differentiates); a deploy net (no loss): none, as `caffe time` logs "does not
    # need backward computation" for every layer; force_backward: every bottom
    needed = needing_gradients(time_net())
    assert needed == {"data": (), "conv": (False,), "relu": (True,), "norm": (True,), "pool": (True,),
                      "fc": (True,), "loss": (True, False)}
    assert not any(any(flags) for flags in needing_gradients(slim_caffenet_deploy()).values())
    forced = needing_gradients(time_net("force_backward: true\n"))
    assert forced["conv"] == (True,) and forced["loss"] == (True, True)


def test_time_computes_weight_gradients_of_a_deploy_net_and_nothing_else():
    from protocaffe.commands.time import backward_layers, forward_layers
    net = slim_caffenet_deploy()
    needed = needing_gradients(net)
    record = forward_layers(net, torch.device("cpu"), {s.key: 0.0 for s in net.plan}, needed, Speed())
    backward_layers(net, record, torch.device("cpu"), {s.key: 0.0 for s in net.plan})
    assert all(p.grad is not None for p in net.parameters())
    assert all(t.grad is None for _, inputs, _ in record for t in inputs)


def test_cross_channel_lrn_backward_is_the_gradient_of_its_forward():
    from protocaffe.layer_types.vision import _CrossChannelLRN
    x = torch.randn(2, 7, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5
    for size, alpha, beta, k in [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.9, 2.0)]:
        assert torch.autograd.gradcheck(lambda t: _CrossChannelLRN.apply(t, size, alpha, beta, k),
                                        x.clone().requires_grad_())


def test_small_batch_inner_product_in_bf16_keeps_a_float32_weight_gradient():
    from protocaffe.speed import LowPrecisionLinear
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 40, generator=g, requires_grad=True)
    w = torch.randn(16, 40, generator=g, requires_grad=True)
    b = torch.randn(16, generator=g, requires_grad=True)
    dy = torch.randn(6, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = torch.nn.functional.linear(x, w, b)
    expected = torch.autograd.grad(plain, (x, w, b), dy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LowPrecisionLinear.apply(x, w, b, torch.bfloat16)
    got = torch.autograd.grad(out, (x, w, b), dy)
    assert out.dtype == torch.bfloat16 and torch.equal(out, plain)  # autocast's forward, bit for bit
    assert torch.equal(got[0], expected[0])  # the input's gradient as autocast computes it
    exact = dy.bfloat16().double().t() @ x.bfloat16().double()  # of the bf16 operands, unrounded
    assert torch.allclose(got[1].double(), exact, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(expected[1].double(), exact, rtol=1e-6, atol=1e-6)  # autocast rounds it
    torch.testing.assert_close(got[2], dy.bfloat16().float().sum(0))


def test_inner_product_takes_the_float32_weight_gradient_on_the_cpu_at_small_batches():
    net = time_net()
    Speed("bf16").prepare(net)
    fc = net.layers["fc"]
    assert fc.fp32_weight_gradient
    with Speed("bf16").autocast(torch.device("cpu")):
        out = net()
    assert out["fc"].grad_fn.name().endswith("LowPrecisionLinearBackward")
    fp32 = time_net()
    Speed().prepare(fp32)
    assert not fp32.layers["fc"].fp32_weight_gradient


def test_time_reports_rates_in_bf16(capsys):
    assert main(["time", "--model", str(NETS / "slim_caffenet_deploy.prototxt"), "--iterations", "1",
                 "--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert "Precision bf16:" in err and "GFLOP/s achieved; matrix-multiply ceiling" in err


def test_bad_precision_and_cpu_cuda_graphs_are_one_line_errors(capsys):
    model = str(NETS / "slim_caffenet_deploy.prototxt")
    assert main(["time", "--model", model, "--precision", "fp64"]) == 1
    assert "precision must be one of fp32, bf16, fp16; found 'fp64'" in capsys.readouterr().err
    assert main(["time", "--model", model, "--cuda_graphs"]) == 1
    assert "--cuda_graphs needs a CUDA device" in capsys.readouterr().err


SMALL_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param {
        num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "pool" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
"""


@pytest.mark.slow
def test_compiled_forward_equals_eager():
    param = text_format.Parse(SMALL_NET, caffe_pb2.NetParameter())
    net = netlib.build_net(param, caffe_pb2.TEST, seed=1)
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    eager = net(x=x)["p"]
    Speed(compile=True).prepare(net)
    torch.testing.assert_close(net(x=x)["p"], eager, rtol=1e-6, atol=1e-6)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_training_on_cuda(precision):
    solver = CaffeSolver(solver_param(precision=precision), gpu=0)
    solver.step(3)
    assert all(lp.tensor.dtype == torch.float32 and lp.tensor.is_cuda for lp in solver.params)
    assert all(torch.isfinite(lp.tensor).all() for lp in solver.params)


@cuda
@pytest.mark.cuda
def test_cuda_graphs_training_step_runs():
    solver = CaffeSolver(solver_param(), gpu=0, speed=Speed(cuda_graphs=True))
    solver.step(3)
    assert all(torch.isfinite(lp.tensor).all() for lp in solver.params)
