"""Every golden layer case from BVLC Caffe: forward, backward and parameter updates match."""
import numpy as np
import pytest
import torch

from conftest import GOLDEN, HAS_CUDA, assert_close
from protocaffe import net as netlib
from protocaffe.proto import caffe_pb2

CASES = sorted(p.name for p in (GOLDEN / "layers").iterdir())


def run_case(case, device="cpu"):
    folder = GOLDEN / "layers" / case
    io_ = np.load(folder / "io.npz")
    phase = caffe_pb2.TRAIN if "train" in case else caffe_pb2.TEST
    net = netlib.build_net(str(folder / "net.prototxt"), phase,
                           weights=str(folder / "weights.caffemodel"), seed=1).to(device)
    layer = net.layer_by_name()["test"]
    for i, blob in enumerate(layer.blobs):
        if f"param_{i}" in io_:
            assert_close(blob.detach().cpu(), io_[f"param_{i}"], what=f"{case} param {i}")
    inputs = {}
    for key in io_.files:
        if key.startswith("in_"):
            arr = io_[key]
            t = torch.from_numpy(arr).to(device)
            if f"gin_{key[3:]}" in io_.files:
                t = t.float().requires_grad_(True)
            inputs[key[3:]] = t
    blobs = net(**inputs)
    for key in io_.files:
        if key.startswith("out_"):
            assert_close(blobs[key[4:]].detach().cpu(), io_[key], what=f"{case} {key}")
        if key.startswith("param_after_"):
            i = int(key.rsplit("_", 1)[1])
            assert_close(layer.blobs[i].detach().cpu(), io_[key], what=f"{case} {key}")
    if not any(k.startswith("gin_") or k.startswith("gparam_") for k in io_.files):
        return
    tdiffs = {k[6:]: io_[k] for k in io_.files if k.startswith("tdiff_")}
    if tdiffs:
        tops = [blobs[name] for name in tdiffs]
        torch.autograd.backward(tops, [torch.from_numpy(d).to(device) for d in tdiffs.values()])
    else:
        net.loss(blobs).backward()
    for key in io_.files:
        if key.startswith("gin_"):
            grad = inputs[key[4:]].grad
            got = torch.zeros_like(inputs[key[4:]]) if grad is None else grad
            assert_close(got.detach().cpu(), io_[key], what=f"{case} {key}")
        if key.startswith("gparam_"):
            blob = layer.blobs[int(key.rsplit("_", 1)[1])]
            got = blob.grad if blob.grad is not None else torch.zeros_like(blob)
            assert_close(got.detach().cpu(), io_[key], what=f"{case} {key}")


@pytest.mark.parametrize("case", CASES)
def test_golden_layer(case):
    run_case(case)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES)
def test_golden_layer_cuda(case):
    run_case(case, "cuda")
