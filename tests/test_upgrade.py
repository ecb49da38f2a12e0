"""Format upgrades: V1 and V0 nets, net inputs, data transform fields, solver types, the tools."""
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import GOLDEN
from protocaffe import io
from protocaffe.cli import main
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2
from protocaffe.upgrade import upgrade_net, upgrade_solver

NETS = GOLDEN / "nets"


def without_blobs(layer):
    out = caffe_pb2.LayerParameter()
    out.CopyFrom(layer)
    del out.blobs[:]
    return out


def test_v1_caffenet_upgrades_to_the_current_definition():
    v1 = upgrade_net(io.read_text(NETS / "slim_caffenet_v1.prototxt", caffe_pb2.NetParameter))
    cur = upgrade_net(io.read_text(NETS / "slim_caffenet_deploy.prototxt", caffe_pb2.NetParameter))
    # Caffe names the layer made from net-level inputs "input"; the current file calls it "data"
    assert v1.layer[0].name == "input" and cur.layer[0].name == "data"
    assert [l.name for l in v1.layer[1:]] == [l.name for l in cur.layer[1:]]
    for a, b in zip(v1.layer, cur.layer):
        assert (a.type, list(a.bottom), list(a.top)) == (b.type, list(b.bottom), list(b.top)), a.name
        for field in ("convolution_param", "pooling_param", "lrn_param", "inner_product_param",
                      "dropout_param", "input_param"):
            assert getattr(a, field) == getattr(b, field), (a.name, field)
        assert [(p.lr_mult, p.decay_mult) for p in a.param] == [(p.lr_mult, p.decay_mult) for p in b.param]


def test_v1_caffemodel_upgrades_to_the_current_blobs():
    v1 = upgrade_net(io.read_binary(NETS / "slim_caffenet_v1.caffemodel", caffe_pb2.NetParameter))
    cur = io.read_binary(NETS / "slim_caffenet.caffemodel", caffe_pb2.NetParameter)
    theirs = {l.name: l.blobs for l in cur.layer if l.blobs}
    ours = {l.name: l.blobs for l in v1.layer if l.blobs}
    assert ours.keys() == theirs.keys()
    for name in ours:
        for a, b in zip(ours[name], theirs[name]):
            expected = io.blob_to_array(b)
            np.testing.assert_array_equal(io.blob_to_array(a).reshape(expected.shape), expected)


def test_input_dim_becomes_an_input_layer():
    net = text_format.Parse('input: "a" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 '
                            'input: "b" input_dim: 5 input_dim: 1 input_dim: 1 input_dim: 1 '
                            'layer { name: "r" type: "ReLU" bottom: "a" top: "a" }', caffe_pb2.NetParameter())
    up = upgrade_net(net)
    assert len(up.input) == 0 and len(up.input_dim) == 0
    assert up.layer[0].type == "Input" and list(up.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in up.layer[0].input_param.shape] == [[1, 2, 3, 4], [5, 1, 1, 1]]
    assert up.layer[1].name == "r"
    with pytest.raises(CaffeError, match="2 inputs need 8 input_dim values, found 4"):
        upgrade_net(text_format.Parse('input: "a" input: "b" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1',
                                      caffe_pb2.NetParameter()))


V0 = """
name: "v0"
layers { layer { name: "data" type: "data" source: "db" batchsize: 4 meanfile: "m.binaryproto" cropsize: 9 mirror: true } top: "data" top: "label" }
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 5 stride: 2 biasterm: false
                 weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 weight_decay: 1 } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "pool1" bottom: "label" }
"""


def test_v0_net_upgrades_with_padding_folded():
    up = upgrade_net(text_format.Parse(V0, caffe_pb2.NetParameter()))
    assert [l.type for l in up.layer] == ["Data", "Convolution", "ReLU", "Pooling", "SoftmaxWithLoss"]
    data, conv, _, pool, _ = up.layer
    assert data.data_param.batch_size == 4 and data.transform_param.crop_size == 9
    assert data.transform_param.mean_file == "m.binaryproto" and data.transform_param.mirror
    assert list(conv.bottom) == ["data"] and list(conv.convolution_param.pad) == [2]
    assert list(conv.convolution_param.kernel_size) == [5] and not conv.convolution_param.bias_term
    assert conv.param[0].lr_mult == 1 and pool.pooling_param.pool == caffe_pb2.PoolingParameter.AVE


def test_data_transform_fields_move():
    net = text_format.Parse('layer { name: "d" type: "Data" top: "data" '
                            'data_param { source: "x" batch_size: 2 scale: 0.5 crop_size: 3 } }',
                            caffe_pb2.NetParameter())
    up = upgrade_net(net)
    assert up.layer[0].transform_param.scale == 0.5 and up.layer[0].transform_param.crop_size == 3
    assert not up.layer[0].data_param.HasField("scale")


def test_batchnorm_specs_removed():
    net = text_format.Parse('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
                            'param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }',
                            caffe_pb2.NetParameter())
    assert len(upgrade_net(net).layer[0].param) == 0


def test_solver_type_upgrade():
    s = upgrade_solver(text_format.Parse("solver_type: ADAM base_lr: 0.1", caffe_pb2.SolverParameter()))
    assert s.type == "Adam" and not s.HasField("solver_type")
    with pytest.raises(CaffeError, match="both the old solver_type field and the new type"):
        upgrade_solver(text_format.Parse('solver_type: ADAM type: "SGD"', caffe_pb2.SolverParameter()))


def test_upgrade_tools(tmp_path, capsys):
    assert main(["upgrade_net_proto_text", str(NETS / "slim_caffenet_v1.prototxt"), str(tmp_path / "net.prototxt")]) == 0
    text = (tmp_path / "net.prototxt").read_text()
    assert 'type: "Convolution"' in text and "layers {" not in text
    assert main(["upgrade_net_proto_binary", str(NETS / "slim_caffenet_v1.caffemodel"), str(tmp_path / "w.caffemodel")]) == 0
    assert len(io.read_binary(tmp_path / "w.caffemodel", caffe_pb2.NetParameter).layers) == 0
    (tmp_path / "old_solver.prototxt").write_text('net: "n"\nsolver_type: NESTEROV\n')
    assert main(["upgrade_solver_proto_text", str(tmp_path / "old_solver.prototxt"), str(tmp_path / "new.prototxt")]) == 0
    assert 'type: "Nesterov"' in (tmp_path / "new.prototxt").read_text()
    capsys.readouterr()
    assert main(["upgrade_net_proto_text", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip().endswith("missing: no such file")
    assert not (tmp_path / "out").exists()
    done = subprocess.run([sys.executable, "-m", "protocaffe.cli", "upgrade_net_proto_binary", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "usage: protocaffe upgrade_net_proto_binary IN OUT" in done.stderr
