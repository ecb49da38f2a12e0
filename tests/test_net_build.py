"""The steps from prototxt to net: NetState filtering, shape inference, loss weights, sharing."""
import pytest
import torch

import protocaffe
from protocaffe import net as netlib
from protocaffe.fileio import parse_text
from protocaffe.proto import caffe_pb2

NET = """
name: "tiny"
layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        param { name: "shared_w" lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "h2"
        param { name: "shared_w" lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 3 } }
layer { name: "relu" type: "ReLU" bottom: "h2" top: "h2" }
layer { name: "train_only" type: "ReLU" bottom: "h" top: "t" include { phase: TRAIN } }
layer { name: "staged" type: "ReLU" bottom: "h" top: "s" include { stage: "deep" min_level: 1 } }
layer { name: "not_staged" type: "ReLU" bottom: "h" top: "ns" exclude { stage: "deep" } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "h2" bottom: "label" top: "loss" }
layer { name: "aux" type: "EuclideanLoss" bottom: "h" bottom: "h2" top: "aux" loss_weight: 0.5 }
"""


def names(net):
    return [net.layers[s.key].name for s in net.plan]


@pytest.fixture
def param():
    return parse_text(NET, caffe_pb2.NetParameter)


def test_filter_by_phase_stage_and_level(param):
    test = netlib.filter_net(param, netlib.net_state(param, caffe_pb2.TEST))
    assert [l.name for l in test.layer] == ["in", "ip1", "ip2", "relu", "not_staged", "loss", "aux"]
    train_deep = netlib.filter_net(param, netlib.net_state(param, caffe_pb2.TRAIN, 1, ["deep"]))
    assert [l.name for l in train_deep.layer] == ["in", "ip1", "ip2", "relu", "train_only", "staged",
                                                  "loss", "aux"]
    shallow = netlib.filter_net(param, netlib.net_state(param, caffe_pb2.TRAIN, 0, ["deep"]))
    assert "staged" not in [l.name for l in shallow.layer]
    assert all(l.phase == caffe_pb2.TRAIN for l in shallow.layer)


def test_include_and_exclude_together_is_an_error(param):
    param.layer[4].exclude.add(phase=caffe_pb2.TEST)
    with pytest.raises(protocaffe.CaffeError, match="train_only.*either include rules or exclude"):
        netlib.filter_net(param, netlib.net_state(param, caffe_pb2.TEST))


def test_shapes_outputs_and_loss_weights(param):
    net = netlib.build_net(param, caffe_pb2.TEST, seed=3)
    assert net.blob_shapes["h"] == (4, 3)
    assert net.blob_shapes["loss"] == ()
    assert net.output_names == ["aux", "loss", "ns"]  # Caffe lists outputs sorted by name
    assert net.loss_tops() == {"loss": 1.0, "aux": 0.5}
    x = torch.randn(4, 3)
    label = torch.tensor([0.0, 1.0, 2.0, 1.0])
    blobs = net(x=x, label=label)
    assert torch.allclose(net.loss(blobs), blobs["loss"] + 0.5 * blobs["aux"])


def test_named_params_are_shared_and_mults_kept(param):
    net = netlib.build_net(param, caffe_pb2.TEST, seed=3)
    by_name = net.layer_by_name()
    assert by_name["ip1"].weight is by_name["ip2"].weight
    learn = [(p.layer, p.index, p.lr_mult, p.decay_mult) for p in net.learnable]
    assert learn == [("ip1", 0, 1.0, 1.0), ("ip1", 1, 2.0, 0.0), ("ip2", 1, 2.0, 1.0)]


def test_unknown_bottom_names_the_layer(param):
    param.layer[2].bottom[0] = "nope"
    with pytest.raises(protocaffe.CaffeError, match="layer 'ip2'.*unknown bottom blob 'nope'"):
        netlib.build_net(param)


def test_same_seed_same_weights(param):
    a = netlib.build_net(param, seed=7)
    b = netlib.build_net(param, seed=7)
    assert torch.equal(a.layer_by_name()["ip1"].weight, b.layer_by_name()["ip1"].weight)


def test_lean_forward_keeps_outputs_and_loss_only(param):
    net = netlib.build_net(param, caffe_pb2.TEST, seed=3)
    x, label = torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0])
    full = net(x=x, label=label)
    net.keep_all_blobs = False
    lean = net(x=x, label=label)
    assert set(lean) == {"aux", "loss", "ns"}
    for name in lean:
        assert torch.equal(lean[name], full[name])
