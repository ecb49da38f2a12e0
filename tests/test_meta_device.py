"""Device hygiene without a GPU: every golden layer case and net runs forward and backward on
the ``meta`` device, and no operation inside may produce a CPU tensor. A layer that makes a
tensor on the CPU (a factory without ``device=``, a draw from a CPU generator) fails here
before it would fail, or copy every iteration, on a GPU."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import GOLDEN
from protocaffe import net as netlib
from protocaffe.proto import caffe_pb2
from protocaffe.speed import Speed

LAYER_CASES = sorted(p.name for p in (GOLDEN / "layers").iterdir())
NETS = {"alexnet": "slim_alexnet_deploy.prototxt", "caffenet": "slim_caffenet_deploy.prototxt"}


class CpuTensors(TorchDispatchMode):
    """Records every operation that returns a CPU tensor."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in flat):
            self.ops.append(str(func))
        return out


def run_on_meta(net, inputs, seeds=None):
    """Forward and backward of ``net`` moved to meta; returns the ops that made CPU tensors."""
    net.to("meta")
    leaves = {k: torch.empty(v.shape, dtype=torch.float32, device="meta").requires_grad_(True)
              for k, v in inputs.items()}
    with CpuTensors() as watch:
        blobs = net(**leaves)
        for t in blobs.values():
            assert t.device.type == "meta"
        loss = net.loss(blobs)
        if seeds:
            torch.autograd.backward([blobs[n] for n in seeds], [torch.ones_like(blobs[n]) for n in seeds])
        elif loss.requires_grad:
            loss.backward()
    return watch.ops


@pytest.mark.parametrize("case", LAYER_CASES)
def test_golden_layer_case_on_meta(case):
    folder = GOLDEN / "layers" / case
    io_ = np.load(folder / "io.npz")
    phase = caffe_pb2.TRAIN if "train" in case else caffe_pb2.TEST
    net = netlib.build_net(str(folder / "net.prototxt"), phase, weights=str(folder / "weights.caffemodel"),
                           seed=1)
    inputs = {k[3:]: io_[k] for k in io_.files if k.startswith("in_")}
    seeds = [k[6:] for k in io_.files if k.startswith("tdiff_")]
    assert run_on_meta(net, inputs, seeds) == []


@pytest.mark.parametrize("name", sorted(NETS))
def test_golden_net_on_meta(name):
    net = netlib.build_net(str(GOLDEN / "nets" / NETS[name]), caffe_pb2.TEST)
    shape = net.blob_shapes["data"]
    assert run_on_meta(net, {"data": np.zeros(shape)}, ["prob"]) == []


RANDOM_NET = """
layer { name: "noise" type: "DummyData" top: "x" dummy_data_param {
        shape { dim: 2 dim: 3 dim: 8 dim: 8 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param {
        num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "c" top: "c" dropout_param { dropout_ratio: 0.5 } }
layer { name: "pool" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "p" top: "loss" }
"""


def test_random_layers_draw_on_the_device():
    """DummyData and TRAIN-phase Dropout draw on the net's device, not on the CPU and copy."""
    param = text_format.Parse(RANDOM_NET, caffe_pb2.NetParameter())
    net = netlib.build_net(param, caffe_pb2.TRAIN, seed=3)
    assert run_on_meta(net, {}) == []


@pytest.mark.parametrize("name", sorted(NETS))
def test_precision_auto_on_meta(name):
    """--precision auto settles per device: on one it knows nothing of (meta, as any device
    that is neither the CPU nor CUDA) it runs fp32, and settling it makes no CPU tensor."""
    net = netlib.build_net(str(GOLDEN / "nets" / NETS[name]), caffe_pb2.TEST).to("meta")
    speed = Speed("auto")
    data = torch.empty(net.blob_shapes["data"], device="meta").requires_grad_(True)
    with CpuTensors() as watch:
        speed.prepare(net)
        with speed.autocast(net.ctx.device):
            blobs = net(data=data)
        blobs["prob"].sum().backward()
    assert speed.precision == "fp32" and watch.ops == []
    assert blobs["prob"].device.type == "meta" and data.grad.device.type == "meta"
