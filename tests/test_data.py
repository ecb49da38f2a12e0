"""The data layers against Caffe's Data-layer batches, and their augmentation and errors."""
import numpy as np
import pytest
import torch

import protocaffe
from conftest import GOLDEN, HAS_CUDA
from protocaffe.io import parse_text
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2

CASES = {
    "meanfile": ("data/train_lmdb", 'crop_size: 28 scale: 0.015625 mean_file: "data/mean.binaryproto"'),
    "meanvalue": ("data/train_lmdb", "crop_size: 28 mean_value: 104 mean_value: 117 mean_value: 123"),
    "encoded_nocrop": ("data/train_lmdb_enc", 'mean_file: "data/mean.binaryproto"'),
}


def data_net(source, transform, phase=caffe_pb2.TEST, batch=8, extra=""):
    text = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" '
            f'transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {extra} }} }}')
    return build_net(parse_text(text, caffe_pb2.NetParameter), phase, seed=5)


def check_case(name, device):
    ref = np.load(GOLDEN / "data" / "data_test.npz")
    net = data_net(*CASES[name]).to(device)
    for i in range(3):
        blobs = net()
        assert blobs["data"].device.type == device
        np.testing.assert_array_equal(blobs["data"].cpu().numpy(), ref[f"{name}_data_{i}"])
        np.testing.assert_array_equal(blobs["label"].cpu().numpy(), ref[f"{name}_label_{i}"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_test_phase_batches_equal_caffe(golden_cwd, name):
    check_case(name, "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CASES))
def test_test_phase_batches_equal_caffe_on_cuda(golden_cwd, name):
    check_case(name, "cuda")


def test_train_crops_lie_inside_and_half_are_mirrored(golden_cwd):
    from protocaffe.data.db import Cursor, decode_datum
    cursor = Cursor("data/train_lmdb")
    images = np.stack([decode_datum(cursor.next()[1], "")[0] for _ in range(40)]).astype(np.float32)
    net = data_net("data/train_lmdb", "crop_size: 20 mirror: true", caffe_pb2.TRAIN, batch=40)
    mirrored = 0
    for _ in range(5):
        out = net()["data"].numpy()
        for img, crop in zip(images, out):
            hits = [(y, x, flip) for y in range(13) for x in range(13) for flip in (False, True)
                    if np.array_equal(img[:, y:y + 20, x:x + 20][..., ::-1] if flip else
                                      img[:, y:y + 20, x:x + 20], crop)]
            assert hits, "a crop that is not a window of its image"
            mirrored += hits[0][2]
    assert 60 <= mirrored <= 140  # about half of 200


def test_cursor_continues_and_wraps(golden_cwd):
    net = data_net("data/train_lmdb", "", batch=16)
    labels = np.concatenate([net()["label"].numpy() for _ in range(5)])  # 80 records of 40
    np.testing.assert_array_equal(labels[:40], labels[40:])


def test_missing_database_names_layer_and_path(golden_cwd):
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'data'.*data/nope.*no LMDB"):
        data_net("data/nope", "")


def test_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data.mdb").write_bytes(b"not an lmdb" * 100)
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'data'.*cannot open as LMDB"):
        data_net(str(tmp_path / "bad"), "")


def test_mean_size_mismatch(golden_cwd):
    with pytest.raises(protocaffe.CaffeError, match=r"mean file .* has shape \(3, 32, 32\).*\(1, 32, 32\)"):
        data_net("data/train_lmdb", 'force_gray: true mean_file: "data/mean.binaryproto"')


def test_leveldb_is_refused_with_the_alternative(golden_cwd):
    text = ('layer { name: "d" type: "Data" top: "data" '
            'data_param { source: "data/train_lmdb" batch_size: 2 backend: LEVELDB } }')
    with pytest.raises(protocaffe.CaffeError, match="LEVELDB backend is not supported.*LMDB"):
        build_net(parse_text(text, caffe_pb2.NetParameter))


def test_memory_data_feeds_arrays():
    text = ('layer { name: "m" type: "MemoryData" top: "data" top: "label" transform_param { scale: 0.5 } '
            'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }')
    net = build_net(parse_text(text, caffe_pb2.NetParameter))
    layer = net.layer_by_name()["m"]
    data = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    layer.set_input_arrays(data, [0, 1, 2, 3])
    first, second, third = net(), net(), net()
    np.testing.assert_array_equal(first["data"].numpy(), data[:2] * 0.5)
    np.testing.assert_array_equal(second["label"].numpy(), [2, 3])
    np.testing.assert_array_equal(third["data"].numpy(), data[:2] * 0.5)
    with pytest.raises(protocaffe.CaffeError, match="multiple of batch_size"):
        layer.set_input_arrays(data[:3], [0, 1, 2])


def test_image_data_reads_list(golden_cwd):
    text = ('layer { name: "img" type: "ImageData" top: "data" top: "label" '
            'image_data_param { source: "data/list.txt" root_folder: "data/images/" batch_size: 4 '
            'new_height: 32 new_width: 32 } }')
    net = build_net(parse_text(text, caffe_pb2.NetParameter))
    from protocaffe.data.db import Cursor, decode_datum
    cursor = Cursor("data/train_lmdb")
    ref = [decode_datum(cursor.next()[1], "") for _ in range(4)]
    out = net()
    # convert_imageset made train_lmdb from the same list with the same resize
    np.testing.assert_array_equal(out["data"].numpy(), np.stack([r[0] for r in ref]).astype(np.float32))
    np.testing.assert_array_equal(out["label"].numpy(), [r[1] for r in ref])


def lmdb_records(path):
    from protocaffe.data.db import open_lmdb
    env = open_lmdb(str(path))
    with env.begin() as txn:
        return list(txn.cursor())


def test_convert_imageset_writes_caffes_records(golden_cwd, tmp_path):
    from protocaffe.cli import main
    assert main(["convert_imageset", "--resize_height=32", "--resize_width=32", "data/images/",
                 "data/list.txt", str(tmp_path / "db")]) == 0
    assert lmdb_records(tmp_path / "db") == lmdb_records(GOLDEN / "data" / "train_lmdb")


def test_convert_imageset_encoded_has_caffes_pixels(golden_cwd, tmp_path):
    from protocaffe.cli import main
    from protocaffe.data.db import decode_datum
    assert main(["convert_imageset", "-encoded", "-encode_type", "png", "-resize_height", "32",
                 "-resize_width", "32", "data/images/", "data/list.txt", str(tmp_path / "enc")]) == 0
    ours, theirs = lmdb_records(tmp_path / "enc"), lmdb_records(GOLDEN / "data" / "train_lmdb_enc")
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    for (_, a), (_, b) in zip(ours, theirs):
        assert np.array_equal(decode_datum(a, "")[0], decode_datum(b, "")[0])


def test_convert_imageset_errors(golden_cwd, tmp_path, capsys):
    from protocaffe.cli import main
    assert main(["convert_imageset", "data/images/", "data/missing.txt", str(tmp_path / "x")]) == 1
    assert "data/missing.txt: cannot read the image list" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_text("img_00.png zero\n")
    assert main(["convert_imageset", "data/images/", str(tmp_path / "bad.txt"), str(tmp_path / "y")]) == 1
    assert "bad.txt:1: expected 'path label'" in capsys.readouterr().err
    assert main(["convert_imageset", "data/images/", "data/list.txt", "data/train_lmdb"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_convert_imageset_skips_unreadable_images(golden_cwd, tmp_path):
    from protocaffe.cli import main
    (tmp_path / "list.txt").write_text("img_00.png 0\nmissing.png 1\nimg_01.png 1\n")
    assert main(["convert_imageset", "data/images/", str(tmp_path / "list.txt"), str(tmp_path / "db")]) == 0
    assert [k for k, _ in lmdb_records(tmp_path / "db")] == [b"00000000_img_00.png", b"00000002_img_01.png"]


def test_compute_image_mean_equals_caffes(golden_cwd, tmp_path, capsys):
    from protocaffe.cli import main
    assert main(["compute_image_mean", "data/train_lmdb", str(tmp_path / "mean.binaryproto")]) == 0
    assert (tmp_path / "mean.binaryproto").read_bytes() == (GOLDEN / "data" / "mean.binaryproto").read_bytes()
    assert "mean_value channel [0]: 39.306" in capsys.readouterr().out


def test_compute_pca_and_colour_augmentation(golden_cwd, tmp_path, capsys):
    from protocaffe.cli import main
    from protocaffe.data.db import Cursor, decode_datum
    from protocaffe.data.pca import load_pca
    assert main(["compute_pca", "data/train_lmdb", str(tmp_path / "pca.binaryproto")]) == 0
    assert capsys.readouterr().out.count("eigenvalue") == 3
    vectors, values = load_pca(tmp_path / "pca.binaryproto")
    cursor = Cursor("data/train_lmdb")
    pixels = np.concatenate([decode_datum(cursor.next()[1], "")[0].reshape(3, -1) for _ in range(40)], 1) / 255.0
    cov = np.cov(pixels, bias=True)
    np.testing.assert_allclose(vectors @ cov @ vectors.T, np.diag(values), atol=1e-6)
    assert values[0] >= values[1] >= values[2] > 0
    pca = f'pca_file: "{tmp_path / "pca.binaryproto"}" pca_std: 0.5'
    plain = data_net("data/train_lmdb", "scale: 0.5", caffe_pb2.TRAIN)()["data"].numpy()
    shifted_net = data_net("data/train_lmdb", f"scale: 0.5 {pca}", caffe_pb2.TRAIN)
    shifted = shifted_net()["data"].numpy()
    diff = shifted - plain  # one colour shift per image and channel, the same at every pixel
    per_image = diff.reshape(8, 3, -1)
    np.testing.assert_allclose(per_image, per_image[:, :, :1].repeat(per_image.shape[2], 2), atol=1e-4)
    shifts = per_image[:, :, 0] / 0.5 / 255.0  # back to [0, 1] colour units
    alphas = shifts @ vectors.T / values      # recover a_i: shift = V^T (a * lambda)
    assert 0.1 < alphas.std() < 1.5 and np.abs(shifts).max() > 0
    test_phase = data_net("data/train_lmdb", f"scale: 0.5 {pca}", caffe_pb2.TEST)()["data"].numpy()
    plain_test = data_net("data/train_lmdb", "scale: 0.5", caffe_pb2.TEST)()["data"].numpy()
    np.testing.assert_array_equal(test_phase, plain_test)
