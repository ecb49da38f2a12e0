"""Pooling beyond the golden cases: Caffe's one-axis padding rule by hand, and STOCHASTIC
pooling (BVLC Caffe has it on the GPU only, so no golden case): the TEST formula against a
hand computation, TRAIN sampling against the activation proportions."""
import numpy as np
import pytest
import torch

from conftest import cuda
from protocaffe import net as netlib
from protocaffe.errors import CaffeError
from protocaffe.fileio import parse_text
from protocaffe.proto import caffe_pb2
from protocaffe.shapes import pool_out


def pooling_net(shape, pooling_param, phase=caffe_pb2.TEST, seed=1):
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f"""
    force_backward: true
    layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}
    layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param {{ {pooling_param} }} }}
    """
    return netlib.build_net(parse_text(text, caffe_pb2.NetParameter), phase, seed=seed)


def test_padding_on_one_axis_drops_the_last_window_on_both():
    # width 7, kernel 2, stride 4, no pad: ceil(5 / 4) + 1 = 3 windows, the last starting at 8
    assert pool_out(7, 2, 4, 0) == 3
    # ... but with pad_h set, Caffe drops a last window starting at or past 7 + 0 on this axis too
    assert pool_out(7, 2, 4, 0, padded=True) == 2
    net = pooling_net((1, 1, 7, 7), "pool: MAX kernel_size: 2 stride: 4 pad_h: 1 pad_w: 0")
    assert net.blob_shapes["y"] == (1, 1, 2, 2)
    x = torch.arange(49.0).reshape(1, 1, 7, 7)
    # rows: windows [-1, 1) and [3, 5) -> rows 0 and 3..4; columns [0, 2) and [4, 6)
    assert net(x=x)["y"].tolist() == [[[[1.0, 5.0], [29.0, 33.0]]]]


def test_stochastic_test_phase_is_the_activation_weighted_average():
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [4.0, 0.0, 5.0]]).reshape(1, 1, 3, 3)
    net = pooling_net((1, 1, 3, 3), "pool: STOCHASTIC kernel_size: 2 stride: 2")
    assert net.blob_shapes["y"] == (1, 1, 2, 2)
    y = net(x=x)["y"][0, 0]
    # windows (clipped at the edge): {1, 2, 3, 0}, {0, 0}, {4, 0}, {5}; all-zero gives 0
    expected = [[(1 + 4 + 9) / 6, 0.0], [16 / 4, 25 / 5]]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6)


def test_stochastic_train_samples_in_proportion_to_activation():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    channels = 20000
    x = values.expand(1, channels, 2, 2).contiguous().requires_grad_(True)
    net = pooling_net((1, channels, 2, 2), "pool: STOCHASTIC kernel_size: 2", caffe_pb2.TRAIN, seed=7)
    y = net(x=x)["y"]
    assert y.shape == (1, channels, 1, 1)
    freq = [(y == v).float().mean().item() for v in (1.0, 2.0, 3.0, 4.0)]
    assert sum(freq) == pytest.approx(1.0)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.02)
    # the gradient goes to the sampled position only
    y.sum().backward()
    picked = (x.detach() == y.detach()).float()
    assert torch.equal(x.grad, picked)


def test_stochastic_train_draws_from_the_net_seed():
    x = torch.rand(2, 3, 6, 6)
    runs = [pooling_net((2, 3, 6, 6), "pool: STOCHASTIC kernel_size: 3 stride: 2",
                        caffe_pb2.TRAIN, seed=s)(x=x)["y"] for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_stochastic_train_draws_on_the_device_not_the_cpu_generator():
    """On another device (``meta`` here, CUDA in the next test) the draws are made there, from
    the net's generator for it: no CPU tensor is made and the CPU generator does not move."""
    from test_meta_device import CpuTensors
    net = pooling_net((2, 3, 6, 6), "pool: STOCHASTIC kernel_size: 3 stride: 2", caffe_pb2.TRAIN).to("meta")
    state = net.ctx.generator.get_state()
    with CpuTensors() as watch:
        y = net(x=torch.empty(2, 3, 6, 6, device="meta"))["y"]
    assert y.device.type == "meta" and y.shape == (2, 3, 3, 3)
    assert watch.ops == [] and torch.equal(net.ctx.generator.get_state(), state)


@cuda
def test_stochastic_train_on_cuda_draws_from_the_nets_cuda_generator():
    x = torch.rand(2, 3, 6, 6, device="cuda")
    nets = [pooling_net((2, 3, 6, 6), "pool: STOCHASTIC kernel_size: 3 stride: 2", caffe_pb2.TRAIN, seed=s)
            .to("cuda") for s in (5, 5)]
    state = nets[0].ctx.generator.get_state()
    first = nets[0](x=x)["y"]
    assert torch.equal(first, nets[1](x=x)["y"]) and torch.equal(nets[0].ctx.generator.get_state(), state)
    generator = nets[0].ctx.generator_on(x.device)
    before = generator.get_state()
    nets[0](x=x)
    assert not torch.equal(generator.get_state(), before)


@pytest.mark.parametrize("param, found", [
    ("pool: STOCHASTIC kernel_size: 2 pad: 1", "STOCHASTIC"),
    ("global_pooling: true kernel_size: 2", "kernel_size: 2"),
    ("global_pooling: true pad: 1", "pad (1, 1)"),
    ("global_pooling: true stride: 2", "stride (2, 2)"),
    ("kernel_size: 0", "kernel size must be positive, found (0, 0)"),
    ("kernel_size: 2 kernel_h: 2 kernel_w: 2", "kernel_size OR both kernel_h and kernel_w"),
    ("kernel_h: 2", "kernel_size OR both kernel_h and kernel_w"),
    ("kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1", "pad OR both pad_h and pad_w"),
    ("kernel_size: 9", "kernel (9, 9) with pad (0, 0) and stride (1, 1) does not fit the input size (5, 5)"),
])
def test_pooling_refuses_what_caffe_refuses(param, found):
    with pytest.raises(CaffeError) as error:
        pooling_net((1, 1, 5, 5), param)
    assert str(error.value).startswith("layer 'pool' (type Pooling): ")
    assert found in str(error.value)


@pytest.mark.parametrize("mode, size", [("CEIL", 3), ("FLOOR", 2)])
def test_unpadded_max_pooling_rounds_as_the_round_mode_says(mode, size):
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    out = pooling_net((1, 1, 6, 6), f"pool: MAX kernel_size: 3 stride: 2 round_mode: {mode}")(x=x)["y"]
    assert out.shape == (1, 1, size, size)  # (6 - 3) / 2 + 1, rounded up or down
    expected = torch.tensor([[14.0, 16.0, 17.0], [26.0, 28.0, 29.0], [32.0, 34.0, 35.0]])[:size, :size]
    assert torch.equal(out[0, 0], expected)  # the last window (ceil) is clipped to the input
