"""ImageData (image files from a list) and MemoryData (arrays from Python)."""
import cv2
import numpy as np
import pytest

import protocaffe
from protocaffe.fileio import parse_text
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2
from test_data import records  # noqa: F401 (a fixture)


def image_net(params, transform="", phase=caffe_pb2.TEST, seed=5, workers=None):
    text = (f'layer {{ name: "img" type: "ImageData" top: "data" top: "label" '
            f'transform_param {{ {transform} }} image_data_param {{ source: "data/list.txt" '
            f'root_folder: "data/images/" {params} }} }}')
    net = build_net(parse_text(text, caffe_pb2.NetParameter), phase, seed=seed)
    if workers is not None:
        net.layer_by_name()["img"].workers = workers
    return net


def list_labels():
    return [int(line.split()[1]) for line in open("data/list.txt")]


def test_image_data_reads_and_resizes_as_convert_imageset_did(golden_cwd):
    # train_lmdb is convert_imageset --resize_height=32 --resize_width=32 of the same list
    ref = records("data/train_lmdb", 12)
    net = image_net("batch_size: 6 new_height: 32 new_width: 32")
    out = [net(), net()]
    np.testing.assert_array_equal(np.concatenate([o["data"].numpy() for o in out]),
                                  np.stack([img for img, _ in ref]).astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([o["label"].numpy() for o in out]), [lab for _, lab in ref])


def test_image_data_transform_and_gray(golden_cwd):
    net = image_net("batch_size: 2 is_color: false", "crop_size: 30 mean_value: 7 scale: 0.5")
    gray = cv2.imread("data/images/img_00.png", cv2.IMREAD_GRAYSCALE)
    h, w = gray.shape
    y, x = (h - 30) // 2, (w - 30) // 2
    out = net()["data"].numpy()
    assert out.shape == (2, 1, 30, 30)
    np.testing.assert_array_equal(out[0, 0], (gray[y:y + 30, x:x + 30] - np.float32(7)) * np.float32(0.5))


@pytest.mark.parametrize("workers", [0, 2])
def test_image_data_shuffles_every_pass(golden_cwd, workers):
    net = image_net("batch_size: 8 shuffle: true", workers=workers)
    passes = [np.concatenate([net()["label"].numpy() for _ in range(5)]) for _ in range(2)]  # 40 images each
    for labels in passes:
        assert sorted(labels) == sorted(list_labels())
        assert list(labels) != list_labels()
    assert list(passes[0]) != list(passes[1])
    again = image_net("batch_size: 8 shuffle: true", workers=1)
    np.testing.assert_array_equal(np.concatenate([again()["label"].numpy() for _ in range(5)]), passes[0])


def test_image_data_rand_skip(golden_cwd):
    labels = list_labels() * 2
    got = image_net("batch_size: 10 rand_skip: 25", seed=3)()["label"].numpy()
    assert any(labels[s:s + 10] == list(got) for s in range(25))


@pytest.mark.parametrize("params, message", [
    ("batch_size: 2 new_height: 32", "new_height and new_width must be set together"),
    ("batch_size: 0", "image_data_param.batch_size must be positive"),
])
def test_image_data_settings(golden_cwd, params, message):
    with pytest.raises(protocaffe.CaffeError, match=f"layer 'img' \\(type ImageData\\): {message}"):
        image_net(params)


def test_image_data_missing_list_and_unreadable_image(golden_cwd, tmp_path, monkeypatch):
    text = ('layer {{ name: "img" type: "ImageData" top: "data" top: "label" '
            'image_data_param {{ source: "{}" root_folder: "data/images/" batch_size: 2 }} }}')
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'img'.*nope.txt: cannot read the image list"):
        build_net(parse_text(text.format(tmp_path / "nope.txt"), caffe_pb2.NetParameter))
    (tmp_path / "list.txt").write_text("img_00.png 0\nimg_01.png 1\nimg_02.png 2\ngone.png 3\n")
    net = build_net(parse_text(text.format(tmp_path / "list.txt"), caffe_pb2.NetParameter))
    net()
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'img'.*could not load data/images/gone.png"):
        net()


def memory_net(transform=False):
    extra = "transform_param { scale: 0.5 } " if transform else ""
    text = ('layer { name: "m" type: "MemoryData" top: "data" top: "label" ' + extra +
            'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }')
    net = build_net(parse_text(text, caffe_pb2.NetParameter))
    return net, net.layer_by_name()["m"]


def test_memory_data_serves_arrays_in_order_and_wraps():
    net, layer = memory_net()
    assert net.blob_shapes == {"data": (2, 1, 2, 3), "label": (2,)}
    data = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    layer.reset(data, [0, 1, 2, 3])
    first, second, third = net(), net(), net()
    np.testing.assert_array_equal(first["data"].numpy(), data[:2])
    np.testing.assert_array_equal(second["label"].numpy(), [2, 3])
    np.testing.assert_array_equal(third["data"].numpy(), data[:2])
    layer.set_input_arrays(data[2:] + 1, np.array([[[[7]]], [[[8]]]]))  # pycaffe's 4-d labels too
    np.testing.assert_array_equal(net()["data"].numpy(), data[2:] + 1)


def test_memory_data_does_not_transform_reset_arrays_as_caffe(logged):
    net, layer = memory_net(transform=True)
    data = np.ones((2, 1, 2, 3), np.float32)
    layer.reset(data, [0, 1])
    assert "does not transform" in logged.text
    np.testing.assert_array_equal(net()["data"].numpy(), data)


def test_memory_data_errors():
    net, layer = memory_net()
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'm'.*no arrays to serve: call reset"):
        net()
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'm'.*multiple of batch_size 2"):
        layer.reset(np.zeros((3, 1, 2, 3)), [0, 1, 2])
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'm'.*shape \(M,\) \+ \(1, 2, 3\), found \(2, 1, 3, 2\)"):
        layer.reset(np.zeros((2, 1, 3, 2)), [0, 1])
    text = 'layer { name: "m" type: "MemoryData" top: "d" top: "l" memory_data_param { batch_size: 2 } }'
    with pytest.raises(protocaffe.CaffeError, match="needs batch_size, channels, height and width"):
        build_net(parse_text(text, caffe_pb2.NetParameter))
