"""Format upgrades: V1 and V0 nets, data transform fields, net inputs, BatchNorm specs, solver
types, and the three upgrade commands."""
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from conftest import GOLDEN, assert_close
from protocaffe import fileio
from protocaffe.cli import main
from protocaffe.errors import CaffeError
from protocaffe.layer_types import LAYERS
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2
from protocaffe.upgrade import V1_SUB_PARAMS, V1_TYPES, net_needs_upgrade, upgrade_net, upgrade_solver

NETS = GOLDEN / "nets"
V1 = caffe_pb2.V1LayerParameter


def net(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


@pytest.fixture
def upgrade_log():
    """The messages logged to the "protocaffe" logger while the test runs."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append((record.levelname, record.getMessage()))
    logger = logging.getLogger("protocaffe")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


# ---- the golden V1 CaffeNet --------------------------------------------------------

def test_v1_caffenet_upgrades_to_the_deploy_net_layer_by_layer(upgrade_log):
    v1 = fileio.read_text(NETS / "slim_caffenet_v1.prototxt", caffe_pb2.NetParameter)
    up = upgrade_net(v1, "v1.prototxt")
    deploy = fileio.read_text(NETS / "slim_caffenet_deploy.prototxt", caffe_pb2.NetParameter)
    assert len(up.layers) == 0 and len(up.input) == 0 and len(up.input_dim) == 0
    assert up.force_backward and up.name == "slim_caffenet_v1"
    # Caffe names the layer it makes from net-level inputs "input"; the deploy file says "data"
    assert (up.layer[0].name, deploy.layer[0].name) == ("input", "data")
    up.layer[0].name = "data"
    assert len(up.layer) == len(deploy.layer) == 24
    for ours, theirs in zip(up.layer, deploy.layer):
        assert ours == theirs, f"{ours.name}:\n{ours}\nexpected:\n{theirs}"
    assert [p.lr_mult for p in up.layer[1].param] == [1, 2]
    assert [p.decay_mult for p in up.layer[1].param] == [1, 0]
    assert [m for _, m in upgrade_log] == [
        "Upgraded v1.prototxt from the V1 layer format to the current one",
        "Upgraded v1.prototxt: net inputs ['data'] became an Input layer"]


def test_v1_caffemodel_upgrades_to_the_current_blobs():
    up = upgrade_net(fileio.read_binary(NETS / "slim_caffenet_v1.caffemodel", caffe_pb2.NetParameter))
    cur = fileio.read_binary(NETS / "slim_caffenet.caffemodel", caffe_pb2.NetParameter)
    assert cur.layer[0].type == "Input" and len(up.layer) == len(cur.layer) - 1 == 23
    for ours, theirs in zip(up.layer, cur.layer[1:]):
        assert (ours.name, ours.type, list(ours.bottom), list(ours.top)) == \
               (theirs.name, theirs.type, list(theirs.bottom), list(theirs.top))
        assert len(ours.blobs) == len(theirs.blobs)
        for a, b in zip(ours.blobs, theirs.blobs):
            assert fileio.is_legacy_blob(a) and not fileio.is_legacy_blob(b)  # V1 blobs are kept as they were
            expected = fileio.blob_to_array(b)
            np.testing.assert_array_equal(fileio.blob_to_array(a).reshape(expected.shape), expected)
    assert sum(len(l.blobs) for l in up.layer) == 16


def test_upgraded_files_build_and_run_like_caffe(tmp_path):
    assert main(["upgrade_net_proto_text", str(NETS / "slim_caffenet_v1.prototxt"),
                 str(tmp_path / "net.prototxt")]) == 0
    assert main(["upgrade_net_proto_binary", str(NETS / "slim_caffenet_v1.caffemodel"),
                 str(tmp_path / "w.caffemodel")]) == 0
    param = fileio.read_text(tmp_path / "net.prototxt", caffe_pb2.NetParameter)
    assert not net_needs_upgrade(param)
    ref = np.load(NETS / "slim_caffenet.npz")
    model = build_net(param, caffe_pb2.TEST, weights=str(tmp_path / "w.caffemodel"))
    out = model(data=torch.from_numpy(ref["blob_data"]))
    for name in ("conv1", "pool2", "fc6", "prob"):
        assert_close(out[name].detach(), ref[f"blob_{name}"], what=name)


# ---- V1 -> current -------------------------------------------------------------------

def test_every_v1_type_has_its_current_name():
    assert set(V1_TYPES) == set(V1.LayerType.values())
    renamed = {V1.NONE: "", V1.SOFTMAX_LOSS: "SoftmaxWithLoss"}
    registered = {t.lower(): t for t in LAYERS}
    for number, name in V1_TYPES.items():
        if number in renamed:
            assert name == renamed[number]
            continue
        enum_name = V1.LayerType.Name(number)
        assert name.lower() == enum_name.replace("_", "").lower(), enum_name
        assert registered.get(name.lower(), name) == name, f"{enum_name}: registered as {registered[name.lower()]}"
    assert (V1_TYPES[V1.INNER_PRODUCT], V1_TYPES[V1.TANH], V1_TYPES[V1.IM2COL], V1_TYPES[V1.HDF5_DATA]) == \
           ("InnerProduct", "TanH", "Im2col", "HDF5Data")


def test_v1_param_specs_and_rules():
    up = upgrade_net(net("""
        layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"
                 param: "w" param: "b" blob_share_mode: PERMISSIVE blobs_lr: 3 blobs_lr: 4 weight_decay: 5
                 loss_weight: 0.5 include { phase: TRAIN } exclude { stage: "s" }
                 inner_product_param { num_output: 7 } }
        layers { type: RELU bottom: "y" top: "y" }"""))
    ip, relu = up.layer
    assert [(p.name, p.share_mode, p.lr_mult, p.decay_mult, p.HasField("decay_mult")) for p in ip.param] == [
        ("w", caffe_pb2.ParamSpec.PERMISSIVE, 3, 5, True), ("b", caffe_pb2.ParamSpec.STRICT, 4, 1, False)]
    assert list(ip.loss_weight) == [0.5] and ip.include[0].phase == caffe_pb2.TRAIN
    assert ip.exclude[0].stage == ["s"] and ip.inner_product_param.num_output == 7
    assert relu.type == "ReLU" and not relu.HasField("name") and len(relu.param) == 0


def test_every_v1_sub_message_is_carried_over():
    v1 = V1(name="all", type=V1.DATA)
    for field in V1_SUB_PARAMS:
        getattr(v1, field).SetInParent()
    up = upgrade_net(caffe_pb2.NetParameter(layers=[v1]))
    assert len(V1_SUB_PARAMS) == 30
    assert [f for f in V1_SUB_PARAMS if not up.layer[0].HasField(f)] == []


def test_mixed_layer_formats_are_refused():
    with pytest.raises(CaffeError, match=r"^n.prototxt: the net has both 'layers' \(V0/V1 format\) and 'layer'"):
        upgrade_net(net('layers { name: "a" type: RELU } layer { name: "b" type: "ReLU" }'), "n.prototxt")


# ---- data transform fields ------------------------------------------------------------

def test_v1_data_layer_transform_fields_move_to_transform_param(upgrade_log):
    up = upgrade_net(net("""
        layers { name: "d" type: DATA top: "x"
                 data_param { source: "db" batch_size: 2 scale: 0.5 mean_file: "m" crop_size: 3 mirror: true } }
        layers { name: "i" type: IMAGE_DATA top: "y" image_data_param { source: "l" crop_size: 5 } }
        layers { name: "w" type: WINDOW_DATA top: "z" window_data_param { source: "w" mirror: true } }
        layers { name: "o" type: IMAGE_DATA top: "v" data_param { scale: 2 } }"""), "d.prototxt")
    d, i, w, other = up.layer
    assert text_format.MessageToString(d.transform_param, as_one_line=True) == \
        'scale: 0.5 mirror: true crop_size: 3 mean_file: "m"'
    assert not any(d.data_param.HasField(f) for f in ("scale", "mean_file", "crop_size", "mirror"))
    assert (d.data_param.source, d.data_param.batch_size) == ("db", 2)
    assert i.transform_param.crop_size == 5 and not i.image_data_param.HasField("crop_size")
    assert w.transform_param.mirror and not w.window_data_param.HasField("mirror")
    # as in Caffe, only the sub-message of the layer's own type is looked at
    assert other.data_param.scale == 2 and not other.HasField("transform_param")
    assert upgrade_log[0][1] == "Upgraded d.prototxt: data layer transformation fields moved to transform_param"


def test_current_format_data_param_fields_are_left_alone_as_in_caffe():
    text = 'layer { name: "d" type: "Data" top: "x" data_param { source: "x" scale: 0.5 } }'
    assert not net_needs_upgrade(net(text))
    assert upgrade_net(net(text)) == net(text)


# ---- V0 ---------------------------------------------------------------------------------

V0 = """
name: "v0"
input: "extra"
input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1
force_backward: true
layers { layer { name: "data" type: "data" source: "db" batchsize: 4 meanfile: "m.binaryproto"
                 cropsize: 9 mirror: true scale: 0.25 rand_skip: 3 new_num: 5 } top: "data" top: "label" }
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 5 stride: 2 group: 2 biasterm: false
                 weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 weight_decay: 1
                 weight_decay: 0 } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "pad2" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.25 k: 2 } bottom: "pool1" top: "norm1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "norm1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 3 bias_filler { type: "constant" value: 1 } }
         bottom: "norm1" top: "fc" }
layers { layer { name: "cat" type: "concat" concat_dim: 0 } bottom: "fc" bottom: "extra" top: "cat" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "fc" bottom: "label" }
"""


def test_v0_net_upgrades_with_padding_folded(upgrade_log):
    up = upgrade_net(net(V0), "v0.prototxt")
    assert (up.name, up.force_backward) == ("v0", True)
    assert [l.type for l in up.layer] == ["Input", "Data", "Convolution", "ReLU", "Pooling", "LRN", "Dropout",
                                          "InnerProduct", "Concat", "SoftmaxWithLoss"]
    inp, data, conv, relu, pool, norm, drop, fc, cat, loss = up.layer
    assert list(inp.top) == ["extra"] and list(inp.input_param.shape[0].dim) == [1, 1, 1, 1]
    assert (data.data_param.source, data.data_param.batch_size, data.data_param.rand_skip) == ("db", 4, 3)
    assert text_format.MessageToString(data.transform_param, as_one_line=True) == \
        'scale: 0.25 mirror: true crop_size: 9 mean_file: "m.binaryproto"'
    assert list(conv.bottom) == ["data"] and list(pool.bottom) == ["conv1"]
    c = conv.convolution_param
    assert (list(c.pad), list(c.kernel_size), list(c.stride), c.group, c.num_output, c.bias_term) == \
        ([2], [5], [2], 2, 8, False)
    assert c.weight_filler.type == "gaussian" and abs(c.weight_filler.std - 0.01) < 1e-9
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    p = pool.pooling_param
    assert (p.pool, p.kernel_size, p.stride, p.pad) == (caffe_pb2.PoolingParameter.AVE, 3, 2, 1)
    n = norm.lrn_param
    assert (n.local_size, n.alpha, n.beta, n.k) == (3, 0.5, 0.25, 2)
    assert abs(drop.dropout_param.dropout_ratio - 0.3) < 1e-7 and fc.inner_product_param.bias_filler.value == 1
    assert cat.concat_param.concat_dim == 0 and list(loss.bottom) == ["fc", "label"]
    assert relu.type == "ReLU" and not relu.HasField("relu_param")
    assert [m for _, m in upgrade_log][0] == "Upgraded v0.prototxt from the V0 layer format to V1"
    assert len(upgrade_log) == 3


def test_v0_data_layer_kinds():
    up = upgrade_net(net("""
        layers { layer { name: "i" type: "images" source: "list.txt" batchsize: 2 shuffle_images: true
                         new_height: 7 new_width: 8 rand_skip: 1 } top: "a" top: "b" }
        layers { layer { name: "w" type: "window_data" source: "w.txt" batchsize: 3 det_fg_threshold: 0.6
                         det_bg_threshold: 0.2 det_fg_fraction: 0.5 det_context_pad: 16
                         det_crop_mode: "square" cropsize: 11 } top: "c" top: "d" }
        layers { layer { name: "h" type: "hdf5_data" source: "h.txt" batchsize: 5 } top: "e" }
        layers { layer { name: "g" type: "infogain_loss" source: "H.binaryproto" } bottom: "a" bottom: "b" }
        layers { layer { name: "o" type: "hdf5_output" hdf5_output_param { file_name: "out.h5" } }
                 bottom: "a" bottom: "b" }"""))
    i, w, h, g, o = up.layer
    ip = i.image_data_param
    assert (ip.source, ip.batch_size, ip.shuffle, ip.new_height, ip.new_width, ip.rand_skip) == \
        ("list.txt", 2, True, 7, 8, 1)
    wp = w.window_data_param
    assert (wp.source, wp.batch_size, wp.context_pad, wp.crop_mode, w.transform_param.crop_size) == \
        ("w.txt", 3, 16, "square", 11)
    assert np.allclose([wp.fg_threshold, wp.bg_threshold, wp.fg_fraction], [0.6, 0.2, 0.5])
    assert (h.type, h.hdf5_data_param.source, h.hdf5_data_param.batch_size) == ("HDF5Data", "h.txt", 5)
    assert (g.type, g.infogain_loss_param.source) == ("InfogainLoss", "H.binaryproto")
    assert (o.type, o.hdf5_output_param.file_name) == ("HDF5Output", "out.h5")


@pytest.mark.parametrize("layers, message", [
    ('layers { layer { name: "a" type: "conv" } bottom: "nowhere" top: "a" }',
     r"^v0.prototxt: layer 'a': bottom 'nowhere' is not a net input nor the top of an earlier layer$"),
    ('layers { layer { name: "a" type: "sparkle" } }',
     r"^v0.prototxt: layer 'a': unknown V0 layer type 'sparkle'; known: accuracy, bnll, "),
    ('layers { layer { name: "r" type: "relu" num_output: 3 } }',
     r"^v0.prototxt: layer 'r': V0 field 'num_output' has no meaning for a 'relu' layer "
     r"\(it is read by: conv, innerproduct\)$"),
    ('input: "x" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "px" } '
     'layers { layer { name: "r" type: "relu" } bottom: "px" top: "r" }',
     r"^v0.prototxt: layer 'r': a padding layer \('p'\) can only feed a conv or pool layer, found type 'relu'$"),
    ('input: "x" layers { layer { name: "a" type: "relu" } bottom: "x" top: "a" } '
     'layers { name: "b" type: RELU bottom: "a" top: "b" }',
     r"^v0.prototxt: layers entry 1 \(name 'b'\) has no V0 'layer \{ \}' block while others have one"),
])
def test_v0_errors_name_the_file_and_layer(layers, message):
    with pytest.raises(CaffeError, match=message):
        upgrade_net(net(layers), "v0.prototxt")


# ---- net inputs ---------------------------------------------------------------------------

def test_input_dim_becomes_an_input_layer():
    up = upgrade_net(net('input: "a" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 '
                         'input: "b" input_dim: 5 input_dim: 1 input_dim: 1 input_dim: 1 '
                         'layer { name: "r" type: "ReLU" bottom: "a" top: "a" }'))
    assert len(up.input) == 0 and len(up.input_dim) == 0
    assert (up.layer[0].name, up.layer[0].type, list(up.layer[0].top)) == ("input", "Input", ["a", "b"])
    assert [list(s.dim) for s in up.layer[0].input_param.shape] == [[1, 2, 3, 4], [5, 1, 1, 1]]
    assert [l.name for l in up.layer] == ["input", "r"]


def test_input_shape_becomes_an_input_layer():
    up = upgrade_net(net('input: "a" input_shape { dim: 2 dim: 3 } input: "b" input_shape { dim: 7 } '
                         'input_dim: 9 layer { name: "r" type: "ReLU" bottom: "a" top: "a" }'))
    assert [list(s.dim) for s in up.layer[0].input_param.shape] == [[2, 3], [7]]
    assert len(up.input_shape) == 0 and len(up.input_dim) == 0


def test_inputs_without_shapes_are_dropped(upgrade_log):
    up = upgrade_net(net('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'), "w")
    assert len(up.input) == 0 and [l.name for l in up.layer] == ["r"]
    assert upgrade_log == [("INFO", "Upgraded w: dropped net inputs ['data'], which have no shapes")]


@pytest.mark.parametrize("text, message", [
    ('input: "a" input: "b" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1',
     "n.prototxt: 2 inputs need 8 input_dim values, found 4"),
    ('input: "a" input: "b" input_shape { dim: 1 }', "n.prototxt: 2 inputs need 2 input_shape, found 1"),
])
def test_input_count_mismatch(text, message):
    with pytest.raises(CaffeError, match=f"^{message}$"):
        upgrade_net(net(text), "n.prototxt")


# ---- BatchNorm ------------------------------------------------------------------------------

def test_old_batchnorm_specs_get_lr_and_decay_zero():
    up = upgrade_net(net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
                         'param { name: "m" lr_mult: 0 } param { lr_mult: 0 decay_mult: 2 } param { lr_mult: 1 } }'
                         'layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 3 } }'))
    assert [(p.name, p.lr_mult, p.decay_mult) for p in up.layer[0].param] == [("m", 0, 0), ("", 0, 0), ("", 0, 0)]
    assert all(p.HasField("decay_mult") for p in up.layer[0].param)
    assert [p.lr_mult for p in up.layer[1].param] == [3]  # not the old three-spec form: left as written


def test_current_net_is_unchanged(upgrade_log):
    deploy = fileio.read_text(NETS / "slim_caffenet_deploy.prototxt", caffe_pb2.NetParameter)
    assert not net_needs_upgrade(deploy)
    assert upgrade_net(deploy) == deploy and upgrade_log == []


# ---- solver -----------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new", [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
                                      ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_upgrade(old, new, upgrade_log):
    s = upgrade_solver(text_format.Parse(f"solver_type: {old} base_lr: 0.1", caffe_pb2.SolverParameter()), "s")
    assert s.type == new and not s.HasField("solver_type") and abs(s.base_lr - 0.1) < 1e-7
    assert upgrade_log == [("INFO", f'Upgraded s: solver_type {old} became type: "{new}"')]


def test_solver_with_both_type_fields_is_refused():
    # Caffe refuses both fields even when they agree
    for text in ('solver_type: ADAM type: "SGD"', 'solver_type: ADAM type: "Adam"'):
        with pytest.raises(CaffeError, match=r'^s.prototxt: both the old solver_type \(ADAM\) and the new type'):
            upgrade_solver(text_format.Parse(text, caffe_pb2.SolverParameter()), "s.prototxt")
    current = caffe_pb2.SolverParameter(type="Adam", base_lr=0.1)
    assert upgrade_solver(current) == current


# ---- the commands -------------------------------------------------------------------------------

def test_upgrade_net_proto_text(tmp_path):
    out = tmp_path / "net.prototxt"
    assert main(["upgrade_net_proto_text", str(NETS / "slim_caffenet_v1.prototxt"), str(out)]) == 0
    text = out.read_text()
    assert 'type: "Convolution"' in text and "layers {" not in text and "input_dim" not in text
    expected = upgrade_net(fileio.read_text(NETS / "slim_caffenet_v1.prototxt", caffe_pb2.NetParameter))
    assert fileio.read_text(out, caffe_pb2.NetParameter) == expected


def test_upgrade_net_proto_binary(tmp_path):
    out = tmp_path / "w.caffemodel"
    assert main(["upgrade_net_proto_binary", str(NETS / "slim_caffenet_v1.caffemodel"), str(out)]) == 0
    written = fileio.read_binary(out, caffe_pb2.NetParameter)
    assert len(written.layers) == 0 and [l.type for l in written.layer][:2] == ["Convolution", "ReLU"]
    assert written == upgrade_net(fileio.read_binary(NETS / "slim_caffenet_v1.caffemodel", caffe_pb2.NetParameter))


def test_upgrade_solver_proto_text(tmp_path):
    (tmp_path / "old.prototxt").write_text('net: "n"\nsolver_type: NESTEROV\nmomentum: 0.9\n')
    assert main(["upgrade_solver_proto_text", str(tmp_path / "old.prototxt"), str(tmp_path / "new.prototxt")]) == 0
    new = fileio.read_text(tmp_path / "new.prototxt", caffe_pb2.SolverParameter)
    assert (new.net, new.type, new.HasField("solver_type")) == ("n", "Nesterov", False)


def test_a_current_file_is_written_unchanged(tmp_path, capsys):
    src = NETS / "slim_caffenet_deploy.prototxt"
    assert main(["upgrade_net_proto_text", str(src), str(tmp_path / "same.prototxt")]) == 0
    assert fileio.read_text(tmp_path / "same.prototxt", caffe_pb2.NetParameter) == \
        fileio.read_text(src, caffe_pb2.NetParameter)
    assert f"{src} is already in the latest format" in capsys.readouterr().err


def test_command_errors_exit_1_with_one_line_and_leave_the_output_alone(tmp_path, capsys):
    out = tmp_path / "out.prototxt"
    out.write_text("previous\n")
    assert main(["upgrade_net_proto_text", str(tmp_path / "missing"), str(out)]) == 1
    assert capsys.readouterr().err == f"protocaffe upgrade_net_proto_text: error: {tmp_path}/missing: no such file\n"
    (tmp_path / "bad_v0.prototxt").write_text('layers { layer { name: "x" type: "sparkle" } }\n')
    assert main(["upgrade_net_proto_text", str(tmp_path / "bad_v0.prototxt"), str(out)]) == 1
    assert "layer 'x': unknown V0 layer type 'sparkle'" in capsys.readouterr().err
    assert main(["upgrade_solver_proto_text", str(NETS / "slim_caffenet_v1.caffemodel"), str(out)]) == 1
    assert "not a text file" in capsys.readouterr().err
    assert out.read_text() == "previous\n"
    assert main(["upgrade_net_proto_binary", "only_one"]) == 1
    assert "usage: protocaffe upgrade_net_proto_binary [--dialect FORK] IN OUT" in capsys.readouterr().err


def test_commands_in_a_subprocess(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "protocaffe.cli", *map(str, args)],
                              capture_output=True, text=True)
    done = run("upgrade_net_proto_binary", NETS / "slim_caffenet_v1.caffemodel", tmp_path / "w.caffemodel")
    assert done.returncode == 0, done.stderr
    assert f"Wrote upgraded NetParameter binary proto to {tmp_path}/w.caffemodel" in done.stderr
    assert len(fileio.read_binary(tmp_path / "w.caffemodel", caffe_pb2.NetParameter).layer) == 23
    bad = run("upgrade_net_proto_text", tmp_path / "nope.prototxt", tmp_path / "out.prototxt")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == f"protocaffe upgrade_net_proto_text: error: {tmp_path}/nope.prototxt: no such file\n"
    assert not (tmp_path / "out.prototxt").exists()
