"""pycaffe's Net surface on the slim CaffeNet (golden nets/): partial forward/backward, names,
reshape, batched forward, and Caffe's synced-memory contract for .data/.diff off the CPU."""
import numpy as np
import pytest

import protocaffe as caffe
from conftest import GOLDEN, HAS_CUDA, assert_close
from protocaffe.pycaffe import Blob

NETS = GOLDEN / "nets"
REF = np.load(NETS / "slim_caffenet.npz")


def slim():
    return caffe.Net(str(NETS / "slim_caffenet_deploy.prototxt"), str(NETS / "slim_caffenet.caffemodel"),
                     caffe.TEST)


def check_partial_forward_and_backward(net):
    net.blobs["data"].data[...] = REF["blob_data"]
    out = net.forward(end="pool5")
    assert list(out) == ["pool5"]
    assert_close(out["pool5"], REF["blob_pool5"], what="pool5")
    assert_close(net.forward(start="fc6")["prob"], REF["blob_prob"], what="prob")
    for name in net.blobs:
        assert_close(net.blobs[name].data, REF[f"blob_{name}"], what=name)
    # Caffe's backward was seeded on prob; for a batch of one fc8's bias gradient is the diff
    # that reached fc8, so seed fc8's diff with it and run backward from the fc8 layer down.
    net.blobs["fc8"].diff[...] = REF["gparam_fc8_1"].reshape(1, -1)
    diffs = net.backward(start="fc8")
    assert_close(diffs["data"], REF["diff_data"], what="diff_data")
    for lname, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            assert_close(blob.diff, REF[f"gparam_{lname}_{i}"], what=f"gparam {lname} {i}")


def test_partial_forward_and_backward_match_caffe():
    check_partial_forward_and_backward(slim())


def test_backward_end_stops_there_and_returns_that_layers_bottom_diffs():
    net = slim()
    net.forward(data=REF["blob_data"])
    net.blobs["fc8"].diff[...] = REF["gparam_fc8_1"].reshape(1, -1)
    out = net.backward(start="fc8", end="fc6")
    assert list(out) == ["pool5"] and np.abs(out["pool5"]).sum() > 0
    assert not np.any(net.blobs["data"].diff) and not np.any(net.params["conv1"][0].diff)


def test_names_and_structure():
    net = slim()
    assert net._layer_names[:4] == ["data", "conv1", "relu1", "pool1"] and len(net.layers) == 24
    assert net._blob_names[:4] == ["data", "conv1", "pool1", "norm1"] and net._blob_names[-1] == "prob"
    assert net.top_names["relu1"] == ["conv1"] and net.bottom_names["pool1"] == ["conv1"]
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert [l.type for l in net.layers[:3]] == ["Input", "Convolution", "ReLU"]
    assert list(net.params) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert net.layer_dict["conv1"].blobs[0].data.shape == (12, 3, 11, 11)
    assert net.layer_dict["fc8"].weight is net.module.layer_by_name()["fc8"].weight
    assert set(net.blob_loss_weights.values()) == {0.0} and len(net._blob_loss_weights) == len(net.blobs)
    assert {"Convolution", "Input", "SoftmaxWithLoss"} <= set(caffe.layer_type_list())
    assert caffe.__version__ == "1.0.0"


def test_reshape_propagates_input_shape():
    net = slim()
    net.blobs["data"].reshape(2, 3, 227, 227)
    net.reshape()
    assert net.blobs["prob"].shape == (2, 10) and net.blobs["pool5"].shape == (2, 32, 6, 6)
    net.blobs["data"].data[...] = np.concatenate([REF["blob_data"]] * 2)
    prob = net.forward()["prob"]
    assert_close(prob, np.concatenate([REF["blob_prob"]] * 2), what="prob x2")


def test_forward_all_and_forward_backward_all_batch_and_unpad():
    net = slim()
    rng = np.random.default_rng(0)
    data = np.concatenate([REF["blob_data"], rng.normal(size=(2, 3, 227, 227)).astype(np.float32)])
    singles = [net.forward(data=d[None])["prob"][0].copy() for d in data]
    all_out = net.forward_all(data=data)
    assert_close(all_out["prob"], np.array(singles), what="forward_all")
    outs, diffs = net.forward_backward_all(data=data, prob=np.ones((3, 10), np.float32))
    assert outs["prob"].shape == (3, 10) and diffs["data"].shape == (3, 3, 227, 227)
    # the softmax's gradient for an all-ones top diff is zero
    np.testing.assert_allclose(diffs["data"], 0, atol=1e-6)


def test_loss_top_diff_holds_its_loss_weight(tmp_path):
    (tmp_path / "n.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } '
        'shape { dim: 2 } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" loss_weight: 2 }\n'
        'force_backward: true\n')
    net = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TRAIN)
    assert net.blob_loss_weights["loss"] == 2.0 and net.blobs["loss"].diff == 2.0
    net.forward(x=np.zeros((2, 3), np.float32), y=np.array([0.0, 2.0], np.float32))
    diff = net.backward()["x"]
    # d(2 * mean_n -log softmax)/dx = 2 * (1/3 - onehot) / 2
    np.testing.assert_allclose(diff, [[1 / 3 - 1, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3 - 1]], rtol=1e-5)


def check_synced_memory(net):
    """Caffe's contract: in-place writes reach the device before the next run; reads see the device."""
    data = net.blobs["data"].data
    data[...] = REF["blob_data"]
    held = net.blobs["prob"].data
    net.forward()
    assert_close(held, REF["blob_prob"], what="held prob array refreshed on read")
    assert net.blobs["prob"].data is held
    net.params["fc8"][0].data[...] = 0
    net.params["fc8"][1].data[...] = 0
    np.testing.assert_allclose(net.forward()["prob"], np.full((1, 10), 0.1), rtol=1e-6)
    assert float(net.layer_dict["fc8"].weight.detach().abs().sum()) == 0.0
    net.blobs["prob"].diff[...] = 1.0
    net.blobs["prob"].diff[0, 0] = 2.0
    diff = net.backward(start="prob", diffs=["fc8"])["fc8"]
    np.testing.assert_allclose(diff, [[0.1 * (2 - 1.1)] + [0.1 * (1 - 1.1)] * 9], rtol=1e-5)


def test_synced_memory_contract_with_host_copies_on_cpu(monkeypatch):
    monkeypatch.setattr(Blob, "host_copies_on_cpu", True)
    net = slim()
    view = net.blobs["data"].data
    assert not np.shares_memory(view, net.blobs["data"]._data.numpy())
    check_synced_memory(net)
    check_partial_forward_and_backward(slim())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_synced_memory_contract_on_cuda():
    caffe.set_mode_gpu()
    try:
        net = slim()
        assert net.blobs["data"]._data.is_cuda and net.layer_dict["conv1"].weight.is_cuda
        check_synced_memory(net)
        check_partial_forward_and_backward(slim())
    finally:
        caffe.set_mode_cpu()


def test_gpu_pointers_need_a_gpu_blob():
    net = slim()
    with pytest.raises(caffe.CaffeError, match="_gpu_data_ptr: this blob lives on the cpu; call caffe.set_mode_gpu"):
        net.blobs["data"]._gpu_data_ptr


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_pointers_are_the_device_tensors_after_host_writes():
    caffe.set_mode_gpu()
    try:
        net = slim()
        blob = net.blobs["data"]
        blob.data[...] = 3.0  # a host write, not yet on the device
        assert blob._gpu_data_ptr == blob._data.data_ptr()
        assert float(blob._data.min()) == 3.0  # pushed before the address was handed out
        blob._data.fill_(5.0)  # a write through the address, as a CUDA kernel would do
        assert float(blob.data.min()) == 5.0  # the host copy is re-read
        weight = net.params["conv1"][0]
        assert weight._gpu_diff_ptr == net.layer_dict["conv1"].weight.grad.data_ptr()
    finally:
        caffe.set_mode_cpu()


def test_set_random_seed_makes_fillers_repeat(tmp_path):
    (tmp_path / "n.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
        'inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }\n')
    caffe.set_random_seed(7)
    a = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST).params["ip"][0].data.copy()
    b = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST).params["ip"][0].data.copy()
    caffe.set_random_seed(7)
    c = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST).params["ip"][0].data.copy()
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)
    # Caffe's values: the gaussian filler's draws from mt19937(7), the second net's after the first's
    from protocaffe import caffe_random
    stream = caffe_random.Stream(7)
    np.testing.assert_array_equal(a.ravel(), caffe_random.gaussian(stream, 12, 0, 1))
    np.testing.assert_array_equal(b.ravel(), caffe_random.gaussian(stream, 12, 0, 1))


def test_errors_name_the_layer():
    net = slim()
    with pytest.raises(caffe.CaffeError, match="no layer named 'fc9'"):
        net.forward(end="fc9")
    with pytest.raises(caffe.CaffeError, match="needs a forward"):
        net.backward()
    with pytest.raises(caffe.CaffeError, match="keeps its shape"):
        net.params["fc8"][0].reshape(3, 3)


def test_ids_hooks_clear_param_diffs_and_timer():
    net = slim()
    assert net._inputs == [0] and net._outputs == [len(net.blobs) - 1]
    assert net._top_ids(2) == net._bottom_ids(2) == [1]  # relu1 works in place on conv1
    assert net._blobs[0] is net.blobs["data"]
    net.forward(data=REF["blob_data"])
    calls = []
    net.before_forward(lambda i: calls.append(("f", i)))
    net.after_backward(lambda i: calls.append(("b", i)))
    net.forward(start="fc8")
    net.backward(start="prob", end="fc8", prob=np.eye(10, dtype=np.float32)[:1])
    assert calls == [("f", 22), ("f", 23), ("b", 23), ("b", 22)]
    assert np.any(net.params["fc8"][0].diff)
    net.clear_param_diffs()
    assert not np.any(net.params["fc8"][0].diff)
    timer = caffe.Timer()
    timer.start()
    net.forward()
    timer.stop()
    assert timer.ms > 0 and caffe.has_nccl()  # caffe.NCCL runs on torch.distributed
