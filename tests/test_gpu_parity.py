"""CUDA against the CPU: every golden layer case and golden net, forward and backward, the
same weights and inputs on both devices (tools/gpu_check.sh runs this file on a GPU).

fp32 on CUDA is IEEE float32 (protocaffe.speed turns cuDNN's TF32 off for it), so every
top, input gradient and parameter gradient agrees with the CPU's within float32 rounding
of different summation orders (conftest.assert_close, rtol 1e-4). bf16 on CUDA is checked
against the CPU's fp32 within bf16's rounding. The full-size CaffeNet and AlexNet deploy
nets (fillers' weights, batch 10) cover cuDNN's algorithms at real sizes."""
import copy

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from conftest import GOLDEN, HAS_CUDA, assert_close
from protocaffe import net as netlib
from protocaffe.proto import caffe_pb2
from protocaffe.speed import Speed
from test_layers_golden import CASES, _inputs, case_on_path  # noqa: F401 (a fixture)
from test_nets import MODELS, NETS

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]

GOLDEN_NETS = ["alexnet", "caffenet"]
FULL_NETS = {"caffenet": MODELS / "bvlc_reference_caffenet/deploy.prototxt",
             "alexnet": MODELS / "bvlc_alexnet/deploy.prototxt"}


def relative_error(actual, expected):
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def host(t):
    return t.detach().float().cpu().numpy()


def results(net, feeds, seeds, device, precision="fp32"):
    """Every top, input gradient and parameter (with its gradient) of ``net`` run forward and
    backward on ``device``: ``feeds`` {input: (numpy array, whether it takes a gradient)},
    ``seeds`` {top: diff} to start the backward from, {} for the net's loss, None for no
    backward. All as numpy arrays, keyed by what they are."""
    speed = Speed(precision)
    speed.prepare(net.to(device))
    inputs = {k: torch.from_numpy(v).to(device) for k, (v, _) in feeds.items()}
    inputs = {k: t.float().requires_grad_(True) if feeds[k][1] else t for k, t in inputs.items()}
    with speed.autocast(torch.device(device)):
        blobs, _ = net.run(inputs)
    if seeds:
        torch.autograd.backward([blobs[n] for n in seeds],
                                [torch.from_numpy(d).to(device).reshape(blobs[n].shape).to(blobs[n].dtype)
                                 for n, d in seeds.items()])
    elif seeds is not None:
        net.loss(blobs).backward()
    out = {f"top {k}": host(t) for k, t in blobs.items()}
    out.update({f"input gradient {k}": host(t.grad) for k, t in inputs.items() if t.grad is not None})
    for name, layer in net.layer_by_name().items():
        for i, blob in enumerate(layer.blobs):
            out[f"param {name} {i}"] = host(blob)
            if blob.grad is not None:
                out[f"param gradient {name} {i}"] = host(blob.grad)
    return out


def assert_same(cpu, gpu, what):
    assert cpu.keys() == gpu.keys(), what
    for key in cpu:
        assert_close(gpu[key], cpu[key], what=f"{what}: {key}")


def golden_case(case):
    folder = GOLDEN / case
    io_ = np.load(folder / "io.npz")
    phase = caffe_pb2.TRAIN if "train" in case else caffe_pb2.TEST
    net = netlib.build_net(str(folder / "net.prototxt"), phase, weights=str(folder / "weights.caffemodel"), seed=1)
    feeds = {k: (io_[f"in_{k}"], t.requires_grad) for k, t in _inputs(io_, "cpu").items()}
    if not any(k.startswith(("gin_", "gparam_", "diff_", "gpre_")) for k in io_.files):
        return net, feeds, None  # a layer without backward (Accuracy, ArgMax, Threshold, Embed's input)
    return net, feeds, {k[6:]: io_[k] for k in io_.files if k.startswith("tdiff_")}


@pytest.mark.parametrize("case_on_path", CASES, indirect=True)
def test_golden_layer_case_cuda_equals_cpu(case_on_path):
    net, feeds, seeds = golden_case(case_on_path)
    cpu = results(copy.deepcopy(net), feeds, seeds, "cpu")
    assert_same(cpu, results(net, feeds, seeds, "cuda"), case_on_path)


def golden_net(name):
    ref = np.load(NETS / f"slim_{name}.npz")
    net = netlib.build_net(str(NETS / f"slim_{name}_deploy.prototxt"), caffe_pb2.TEST,
                           weights=str(NETS / f"slim_{name}.caffemodel"))
    return net, {"data": (ref["blob_data"], True)}, {"fc8": ref["gparam_fc8_1"]}


@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_golden_net_cuda_equals_cpu(name):
    net, feeds, seeds = golden_net(name)
    cpu = results(copy.deepcopy(net), feeds, seeds, "cpu")
    assert_same(cpu, results(net, feeds, seeds, "cuda"), name)


def random_weights(net, seed):
    """He-initialised weights and small biases (the deploy files have no fillers: all zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers.values():
            for blob in layer.blobs:
                if blob.dim() > 1:
                    blob.normal_(0, (2 / blob[0].numel()) ** 0.5, generator=gen)
                else:
                    blob.uniform_(0, 0.1, generator=gen)
    return net


@pytest.mark.parametrize("name", sorted(FULL_NETS))
def test_full_size_net_cuda_equals_cpu(name):
    """Tops elementwise; the gradients by their relative L2 error (below 1e-4): at this size a
    few max-pooling windows hold two values within float32 rounding of each other, and the
    devices may send such a window's gradient to different inputs."""
    param = text_format.Parse(FULL_NETS[name].read_text(), caffe_pb2.NetParameter())
    param.force_backward = True  # a deploy net has no loss: without it, no gradient at all
    net = random_weights(netlib.build_net(param, caffe_pb2.TEST), seed=1)
    feeds = {"data": (np.random.default_rng(1).uniform(-100, 100, net.blob_shapes["data"]).astype(np.float32), True)}
    seeds = {"fc8": np.random.default_rng(2).standard_normal(net.blob_shapes["fc8"]).astype(np.float32)}
    cpu = results(copy.deepcopy(net), feeds, seeds, "cpu")
    gpu = results(net, feeds, seeds, "cuda")
    assert cpu.keys() == gpu.keys() and {"input gradient data", "param gradient conv1 0"} <= cpu.keys()
    for key in cpu:
        if "gradient" in key:
            assert relative_error(gpu[key], cpu[key]) < 1e-4, key
        else:
            assert_close(gpu[key], cpu[key], what=f"{name}: {key}")


@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_golden_net_bf16_on_cuda_within_bf16_of_cpu_fp32(name):
    """bf16 tensor cores against the CPU's fp32: every blob within 2% (relative L2 norm), the
    same top class, fc8's weight gradient within 2% (the gradients further down compound
    the rounding: max pooling and ReLU route them by the rounded forward values)."""
    net, feeds, seeds = golden_net(name)
    cpu = results(copy.deepcopy(net), feeds, seeds, "cpu")
    gpu = results(net, feeds, seeds, "cuda", "bf16")
    assert gpu["top prob"].argmax() == cpu["top prob"].argmax()
    for key in cpu:
        if key.startswith("top "):
            assert relative_error(gpu[key], cpu[key]) < 0.02, key
    assert relative_error(gpu["param gradient fc8 0"], cpu["param gradient fc8 0"]) < 0.02
