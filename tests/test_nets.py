"""Whole nets: the slim AlexNet and CaffeNet against Caffe, the V1 CaffeNet, the model-zoo definitions."""
from pathlib import Path

import numpy as np
import pytest
import torch

import protocaffe
from conftest import GOLDEN, HAS_CUDA, assert_close
from protocaffe import net as netlib

NETS = GOLDEN / "nets"
MODELS = Path(__file__).parent.parent / "models"


def check_slim(name, prototxt, device="cpu"):
    ref = np.load(NETS / f"slim_{name}.npz")
    net = netlib.build_net(str(NETS / prototxt), protocaffe.TEST,
                           weights=str(NETS / f"slim_{name}.caffemodel")).to(device)
    for lname, layer in net.layer_by_name().items():
        for i, blob in enumerate(layer.blobs):
            assert_close(blob.detach().cpu(), ref[f"param_{lname}_{i}"], what=f"param {lname} {i}")
    data = torch.from_numpy(ref["blob_data"]).to(device).requires_grad_(True)
    first = {}
    blobs, _ = net.run({"data": data}, first)
    for key in ref.files:
        if key.startswith("blob_"):
            assert_close(blobs[key[5:]].detach().cpu(), ref[key], what=key)
    # Caffe backpropagated a random diff on prob; for a batch of one, fc8's bias gradient is
    # exactly the diff that reached fc8, so start backward there with it.
    seed = torch.from_numpy(ref["gparam_fc8_1"]).reshape(first["fc8"].shape).to(device)
    first["fc8"].backward(seed)
    assert_close(data.grad.cpu(), ref["diff_data"], what="diff_data")
    for lname, layer in net.layer_by_name().items():
        for i, blob in enumerate(layer.blobs):
            assert_close(blob.grad.cpu(), ref[f"gparam_{lname}_{i}"], what=f"gparam {lname} {i}")


def test_slim_alexnet_matches_caffe():
    check_slim("alexnet", "slim_alexnet_deploy.prototxt")


def test_slim_caffenet_matches_caffe():
    check_slim("caffenet", "slim_caffenet_deploy.prototxt")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["alexnet", "caffenet"])
def test_slim_nets_match_caffe_on_cuda(name):
    check_slim(name, f"slim_{name}_deploy.prototxt", "cuda")


def test_v1_caffenet_equals_current():
    ref = np.load(NETS / "slim_caffenet.npz")
    v1 = netlib.build_net(str(NETS / "slim_caffenet_v1.prototxt"), protocaffe.TEST,
                          weights=str(NETS / "slim_caffenet_v1.caffemodel"))
    cur = netlib.build_net(str(NETS / "slim_caffenet_deploy.prototxt"), protocaffe.TEST,
                           weights=str(NETS / "slim_caffenet.caffemodel"))
    assert [s.tops for s in v1.plan] == [s.tops for s in cur.plan]
    x = torch.from_numpy(ref["blob_data"])
    out_v1, out_cur = v1(data=x), cur(data=x)
    for name in out_cur:
        assert torch.equal(out_v1[name], out_cur[name]), name
    assert_close(out_v1["prob"].detach(), ref["blob_prob"], what="prob")


@pytest.mark.parametrize("model", ["bvlc_alexnet", "bvlc_reference_caffenet"])
def test_model_zoo_definitions_compile(model):
    folder = MODELS / model
    deploy = netlib.build_net(str(folder / "deploy.prototxt"), protocaffe.TEST, seed=1)
    assert sum(t.numel() for layer in deploy.layers.values() for t in layer.blobs) == 60_965_224
    shapes = deploy.blob_shapes
    assert shapes["conv1"] == (10, 96, 55, 55)
    assert shapes["pool5"] == (10, 256, 6, 6)
    assert shapes["prob"] == (10, 1000)
    order = [s.key for s in deploy.plan]
    if model == "bvlc_alexnet":
        assert order.index("norm1") < order.index("pool1")
        assert shapes["norm1"] == (10, 96, 55, 55)
    else:
        assert order.index("pool1") < order.index("norm1")
        assert shapes["norm1"] == (10, 96, 27, 27)
    assert tuple(deploy.layer_by_name()["conv2"].weight.shape) == (256, 48, 5, 5)
    # BVLC's deploy files carry no fillers; train_val's (its TEST net, data fed as an input) do
    train_val = netlib.read_net_param(str(folder / "train_val.prototxt"))
    assert "filler" not in (folder / "deploy.prototxt").read_text()
    param = netlib.filter_net(train_val, netlib.net_state(train_val, protocaffe.TEST))
    data = param.layer[0]
    data.type = "Input"
    data.input_param.shape.add(dim=[10, 3, 227, 227])
    data.input_param.shape.add(dim=[10])
    trained = netlib.CaffeNet(param, seed=1).layer_by_name()
    bias = 0.1 if model == "bvlc_alexnet" else 1.0
    assert torch.all(trained["conv2"].bias == bias)
    assert torch.all(trained["conv3"].bias == 0)
    assert abs(trained["fc6"].weight.std().item() - 0.005) < 0.0002
    solver = (folder / "solver.prototxt").read_text()
    for line in ('base_lr: 0.01', 'lr_policy: "step"', 'gamma: 0.1', 'stepsize: 100000',
                 'max_iter: 450000', 'momentum: 0.9', 'weight_decay: 0.0005', 'snapshot: 10000'):
        assert line in solver


def test_pycaffe_style_api():
    ref = np.load(NETS / "slim_caffenet.npz")
    net = protocaffe.Net(str(NETS / "slim_caffenet_deploy.prototxt"),
                         str(NETS / "slim_caffenet.caffemodel"), protocaffe.TEST)
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    net.blobs["data"].data[...] = ref["blob_data"]
    out = net.forward()
    assert_close(out["prob"], ref["blob_prob"], what="prob")
    assert_close(net.blobs["pool5"].data, ref["blob_pool5"], what="pool5")
    assert net.params["conv1"][0].data.shape == (12, 3, 11, 11)
    net.params["fc8"][0].data[...] = 0  # numpy views write through
    net.params["fc8"][1].data[...] = 0
    assert torch.all(net.layer_dict["fc8"].weight == 0)
    out2 = net.forward(data=ref["blob_data"])
    np.testing.assert_allclose(out2["prob"], np.full((1, 10), 0.1), rtol=1e-6)
    net.backward(prob=np.ones((1, 10)))
    assert net.blobs["fc8"].diff.shape == (1, 10)


def test_save_round_trips(tmp_path):
    net = netlib.build_net(str(NETS / "slim_caffenet_deploy.prototxt"), protocaffe.TEST,
                           weights=str(NETS / "slim_caffenet.caffemodel"))
    net.save(tmp_path / "copy.caffemodel")
    again = netlib.build_net(str(NETS / "slim_caffenet_deploy.prototxt"), protocaffe.TEST,
                             weights=str(tmp_path / "copy.caffemodel"))
    for (n, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_wrong_weight_shape_names_layer_and_shapes(tmp_path):
    text = (NETS / "slim_caffenet_deploy.prototxt").read_text().replace("num_output: 10", "num_output: 11")
    (tmp_path / "net.prototxt").write_text(text)
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'fc8'.*10x64.*11x64"):
        netlib.build_net(str(tmp_path / "net.prototxt"), protocaffe.TEST,
                         weights=str(NETS / "slim_caffenet.caffemodel"))


def test_unknown_layer_type_lists_known_types(tmp_path):
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
        'layer { name: "py" type: "NoSuchType" bottom: "x" top: "y" }\n')
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'py' has type 'NoSuchType'.*supported types: .*Input"):
        netlib.build_net(str(tmp_path / "net.prototxt"))


def test_pycaffe_set_input_arrays(tmp_path):
    (tmp_path / "m.prototxt").write_text(
        'layer { name: "m" type: "MemoryData" top: "data" top: "label" '
        'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 3 } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        'inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }\n')
    net = protocaffe.Net(str(tmp_path / "m.prototxt"), protocaffe.TEST)
    net.set_input_arrays(np.arange(12, dtype=np.float32).reshape(4, 1, 1, 3), np.arange(4, dtype=np.float32))
    out = net.forward()
    np.testing.assert_array_equal(out["ip"], [[3, 3], [12, 12]])
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1])
