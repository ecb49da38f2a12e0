"""net_spec: pycaffe's scripts print byte for byte what pycaffe printed (golden pycaffe/netspec)."""
import contextlib
import importlib.util
import io
import sys

import pytest

import protocaffe
from conftest import GOLDEN
from protocaffe import NetSpec, caffe_pb2, layers as L, params as P, to_proto
from protocaffe.errors import CaffeError
from protocaffe.fileio import parse_text

NETSPEC = GOLDEN / "pycaffe" / "netspec"


@pytest.mark.parametrize("script", ["lenet_spec", "caffenet_spec"])
def test_golden_scripts_print_what_pycaffe_printed(script, monkeypatch):
    monkeypatch.setitem(sys.modules, "caffe", protocaffe)  # the scripts do `import caffe`
    spec = importlib.util.spec_from_file_location(f"golden_{script}", NETSPEC / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.print_nets()
    assert out.getvalue() == (NETSPEC / f"{script}.expected.txt").read_text()


def _text(net):
    return str(net)


def test_auto_names_count_per_type_and_named_tops_win():
    data = L.Input(shape=dict(dim=[1, 2]))
    a = L.ReLU(data)
    b = L.ReLU(a)
    assert _text(to_proto(b)) == _text(parse_text("""
        layer { name: "Input1" type: "Input" top: "Input1" input_param { shape { dim: 1 dim: 2 } } }
        layer { name: "ReLU1" type: "ReLU" bottom: "Input1" top: "ReLU1" }
        layer { name: "ReLU2" type: "ReLU" bottom: "ReLU1" top: "ReLU2" }
        """, caffe_pb2.NetParameter))
    n = NetSpec()
    n.x = data
    n["y"] = b
    assert n["x"] is data and n.y is b
    assert [(l.name, list(l.top)) for l in n.to_proto().layer] == [
        ("x", ["x"]), ("ReLU1", ["ReLU1"]), ("y", ["y"])]


def test_ntop_in_place_params_include_and_layer_fields():
    n = NetSpec()
    n.data, n.label = L.Data(source="db", backend=P.Data.LMDB, batch_size=4, ntop=2,
                             include=dict(phase=protocaffe.TRAIN))
    n.ip = L.InnerProduct(n.data, num_output=3, param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)],
                          weight_filler=dict(type="xavier"), exclude=[dict(stage="deploy")])
    n.relu = L.ReLU(n.ip, in_place=True, relu_param=dict(negative_slope=0.5))
    n.loss = L.SoftmaxWithLoss(n.relu, n.label, loss_weight=2, propagate_down=[True, False])
    silence = L.Silence(n.loss, ntop=0)
    assert isinstance(silence, protocaffe.net_spec.Function)
    expected = parse_text("""
        layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
                data_param { source: "db" batch_size: 4 backend: LMDB } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 } exclude { stage: "deploy" }
                inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
        layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" relu_param { negative_slope: 0.5 } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
                loss_weight: 2 propagate_down: true propagate_down: false }
        """, caffe_pb2.NetParameter)
    assert _text(n.to_proto()) == _text(expected)
    assert [l.name for l in to_proto(silence).layer][-1] == "Silence1"


def test_params_are_the_enum_values():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    with pytest.raises(AttributeError):
        P.NoSuchLayer.MAX


@pytest.mark.parametrize("make", [
    lambda: to_proto(L.ReLU(L.Input(), no_such_field=1)),
    lambda: to_proto(L.Convolution(L.Input(), weight_filler=dict(kind="x"))),
    lambda: to_proto(L.Convolution(L.Input(), num_output="many")),
    lambda: L.ReLU("data"),
])
def test_user_errors_raise_caffe_error(make):
    with pytest.raises(CaffeError):
        make()
