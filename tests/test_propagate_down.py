"""Caffe's backward rules in the net (the golden cases layers2/propagate_down_* check the
default): ``propagate_down: false`` stops a layer's gradient into that bottom unless the net
has ``force_backward: true``; without force_backward a layer feeding no loss runs no backward."""
import numpy as np
import pytest
import torch

from conftest import GOLDEN
from protocaffe import net as netlib
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2

EUCLIDEAN = GOLDEN / "layers2" / "propagate_down_euclidean"


def euclidean_net(force_backward):
    param = netlib.read_net_param(EUCLIDEAN / "net.prototxt")
    param.force_backward = force_backward
    return netlib.build_net(param, caffe_pb2.TEST, weights=str(EUCLIDEAN / "weights.caffemodel"))


def diffs(net, a, b):
    blobs, first = net.run({"a": a, "b": b}, first={})
    for name in ("a_s", "b_s"):
        first[name].retain_grad()
    net.loss(blobs).backward()
    return [torch.zeros(3, 4) if first[n].grad is None else first[n].grad for n in ("a_s", "b_s")]


def test_force_backward_overrides_propagate_down():
    io_ = np.load(EUCLIDEAN / "io.npz")
    a, b = torch.from_numpy(io_["in_a"]), torch.from_numpy(io_["in_b"])
    # loss = sum((a_s - b_s)^2) / (2 N), a_s = 1.5 a: d/da_s = (a_s - b_s) / N, d/db_s its negative
    by_hand = 1.5 * (a - b) / 3
    kept, passed = diffs(euclidean_net(False), a, b)
    assert torch.equal(kept, torch.zeros(3, 4))
    torch.testing.assert_close(passed, -by_hand)
    forced_a, forced_b = diffs(euclidean_net(True), a, b)
    torch.testing.assert_close(forced_a, by_hand)
    torch.testing.assert_close(forced_b, -by_hand)


def test_propagate_down_needs_one_value_per_bottom():
    param = netlib.read_net_param(EUCLIDEAN / "net.prototxt")
    param.layer[-1].propagate_down.append(True)
    with pytest.raises(CaffeError, match="layer 'test': propagate_down must be given once per "
                                         "bottom \\(2\\) or not at all, found 3"):
        netlib.build_net(param, caffe_pb2.TEST)


def test_a_layer_feeding_no_loss_runs_no_backward_unless_forced():
    folder = GOLDEN / "layers2" / "propagate_down_conv"
    for force in (False, True):
        param = netlib.read_net_param(folder / "net.prototxt")
        param.force_backward = force
        del param.layer[-1].propagate_down[:]
        net = netlib.build_net(param, caffe_pb2.TEST, seed=1)
        out = net(x=torch.ones(2, 2, 5, 5))["out"]
        out.backward(torch.ones_like(out))
        grads = [net.layer_by_name()[name].blobs[0].grad for name in ("test", "pre_x")]
        assert all((g is not None and bool(g.abs().sum() > 0)) == force for g in grads), force
