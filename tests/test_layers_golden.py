"""Every golden layer case from BVLC Caffe (layers/ and layers2/): forward, backward and
parameter updates match.

Keys of a case's io.npz: ``in_<x>`` inputs, ``out_<top>`` tops, ``tdiff_<top>`` the diff
fed back into a top (else the net's loss is back-propagated), ``gin_<x>`` input gradients,
``param_<i>``/``gparam_<i>``/``param_after_<i>`` the tested layer's blobs, their gradients
and their values after the forward; ``diff_<blob>`` the gradient reaching an inner blob and
``gpre_<x>`` the gradient of the Scale layer ``pre_<x>``'s parameter (layers2).
"""
import numpy as np
import pytest
import torch

from conftest import GOLDEN, HAS_CUDA, assert_close
from protocaffe import net as netlib
from protocaffe.proto import caffe_pb2

NOT_LAYER_CASES = {"hdf5_data"}
"""layers2 cases in another format, tested with the data layers."""


def _cases():
    cases = [f"layers/{p.name}" for p in sorted((GOLDEN / "layers").iterdir())]
    cases += [f"layers2/{p.name}" for p in sorted((GOLDEN / "layers2").iterdir())
              if p.name not in NOT_LAYER_CASES]
    return cases


CASES = _cases()


def _inputs(io_, device):
    inputs = {}
    for key in io_.files:
        if key.startswith("in_"):
            t = torch.from_numpy(io_[key]).to(device)
            if f"gin_{key[3:]}" in io_.files:
                t = t.float().requires_grad_(True)
            inputs[key[3:]] = t
    return inputs


def _grad(t):
    return (torch.zeros_like(t) if t.grad is None else t.grad).detach().cpu()


def run_case(case, device="cpu"):
    folder = GOLDEN / case
    io_ = np.load(folder / "io.npz")
    keys = io_.files
    phase = caffe_pb2.TRAIN if "train" in case else caffe_pb2.TEST
    net = netlib.build_net(str(folder / "net.prototxt"), phase,
                           weights=str(folder / "weights.caffemodel"), seed=1).to(device)
    layers = net.layer_by_name()
    layer = layers["test"]
    for i, blob in enumerate(layer.blobs):
        if f"param_{i}" in keys:
            assert_close(blob.detach().cpu(), io_[f"param_{i}"], what=f"{case} param {i}")
    inputs = _inputs(io_, device)
    blobs, first = net.run(inputs, first={})
    for key in keys:
        if key.startswith("diff_") and first[key[5:]].requires_grad:
            first[key[5:]].retain_grad()
        if key.startswith("out_"):
            assert_close(blobs[key[4:]].detach().cpu(), io_[key], what=f"{case} {key}")
        if key.startswith("param_after_"):
            i = int(key.rsplit("_", 1)[1])
            assert_close(layer.blobs[i].detach().cpu(), io_[key], what=f"{case} {key}")
    if not any(k.startswith(("gin_", "gparam_", "diff_", "gpre_")) for k in keys):
        return
    tdiffs = {k[6:]: io_[k] for k in keys if k.startswith("tdiff_")}
    if tdiffs:
        tops = [blobs[name] for name in tdiffs]
        torch.autograd.backward(tops, [torch.from_numpy(d).to(device) for d in tdiffs.values()])
    else:
        net.loss(blobs).backward()
    for key in keys:
        if key.startswith("gin_"):
            got = _grad(inputs[key[4:]])
        elif key.startswith("gparam_"):
            got = _grad(layer.blobs[int(key.rsplit("_", 1)[1])])
        elif key.startswith("diff_"):
            got = _grad(first[key[5:]])
        elif key.startswith("gpre_"):
            got = _grad(layers[f"pre_{key[5:]}"].blobs[0])
        else:
            continue
        assert_close(got, io_[key], what=f"{case} {key}")


@pytest.fixture
def case_on_path(request, monkeypatch):
    """The case folder on sys.path: python_* cases import their layer module from there."""
    monkeypatch.syspath_prepend(str(GOLDEN / request.param))
    return request.param


@pytest.mark.parametrize("case_on_path", CASES, indirect=True)
def test_golden_layer(case_on_path):
    run_case(case_on_path)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("case_on_path", CASES, indirect=True)
def test_golden_layer_cuda(case_on_path):
    run_case(case_on_path, "cuda")
