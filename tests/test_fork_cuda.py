"""The forks' nets on a CUDA device against the CPU, forward and backward (skipped without one):
SegNet's unpooling scatter and Pooling's mask, Interp's gathers, the BN layers, ShuffleChannel,
depthwise convolutions, ReLU6 and Axpy on the device."""
import pytest
import torch

from conftest import assert_close, cuda
from fork_nets import input_layer
from protocaffe.net import build_net
from test_fork_mobile import mobilenet_v2_block, se_block, shufflenet_units
from test_fork_pspnet import pyramid_pooling
from test_fork_segnet import enet_like, segnet_like

NETS = {"segnet": input_layer("data", (2, 3, 10, 14)) + segnet_like(),
        "enet": input_layer("data", (1, 3, 16, 16)) + enet_like(),
        "pyramid": pyramid_pooling(), "shufflenet": shufflenet_units(), "se": se_block(),
        "mobilenet": mobilenet_v2_block()}


@cuda
@pytest.mark.parametrize("name", sorted(NETS))
def test_the_forks_nets_on_cuda_equal_the_cpu(tmp_path, name):
    path = tmp_path / "net.prototxt"
    path.write_text("force_backward: true\n" + NETS[name])
    net = build_net(path, seed=0)
    x = torch.randn(net.blob_shapes["data"], generator=torch.Generator().manual_seed(0))
    results = []
    for device in ("cpu", "cuda"):
        net.to(device)
        data = x.to(device).requires_grad_()
        out = net(data=data)[net.output_names[0]]
        out.backward(torch.ones_like(out))
        results.append((out.detach().cpu().numpy(), data.grad.cpu().numpy()))
    for cpu, gpu in zip(*results):
        assert_close(gpu, cpu)
