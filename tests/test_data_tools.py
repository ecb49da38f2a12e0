"""convert_imageset, compute_image_mean and compute_pca through the command line, against Caffe's outputs."""
import cv2
import numpy as np
import pytest

from conftest import GOLDEN
from protocaffe.cli import main
from protocaffe.data.db import decode_datum, open_lmdb
from protocaffe.proto import caffe_pb2


def lmdb_records(path):
    with open_lmdb(str(path)).begin() as txn:
        return list(txn.cursor())


def test_convert_imageset_writes_caffes_records(golden_cwd, tmp_path):
    assert main(["convert_imageset", "--resize_height=32", "--resize_width=32", "data/images/",
                 "data/list.txt", str(tmp_path / "db")]) == 0
    assert lmdb_records(tmp_path / "db") == lmdb_records(GOLDEN / "data" / "train_lmdb")


def test_convert_imageset_encoded_writes_caffes_records(golden_cwd, tmp_path):
    assert main(["convert_imageset", "-encoded", "-encode_type", "png", "--resize_height", "32",
                 "-resize_width=32", "data/images/", "data/list.txt", str(tmp_path / "enc")]) == 0
    ours, caffes = lmdb_records(tmp_path / "enc"), lmdb_records(GOLDEN / "data" / "train_lmdb_enc")
    assert [k for k, _ in ours] == [k for k, _ in caffes]
    for (_, a), (_, b) in zip(ours, caffes):
        np.testing.assert_array_equal(decode_datum(a, "")[0], decode_datum(b, "")[0])
    assert ours == caffes  # the same PNG bytes, even


def test_encoded_without_resize_keeps_the_files_bytes(golden_cwd, tmp_path):
    # --encode_type alone implies --encoded; without it the type is each file's extension
    assert main(["convert_imageset", "--encode_type=png", "data/images/", "data/list.txt", str(tmp_path / "a")]) == 0
    assert main(["convert_imageset", "data/images/", "data/list.txt", str(tmp_path / "b"), "--encoded"]) == 0
    for key, value in lmdb_records(tmp_path / "a"):
        datum = caffe_pb2.Datum.FromString(value)
        assert datum.encoded and datum.data == (golden_cwd / "data" / "images" / key.decode()[9:]).read_bytes()
    assert lmdb_records(tmp_path / "a") == lmdb_records(tmp_path / "b")
    assert main(["convert_imageset", "--encode_type=jpg", "data/images/", "data/list.txt", str(tmp_path / "c")]) == 0
    first = caffe_pb2.Datum.FromString(lmdb_records(tmp_path / "c")[0][1])
    assert first.data[:2] == b"\xff\xd8"  # re-encoded as JPEG


def test_convert_imageset_gray_and_shuffle(golden_cwd, tmp_path):
    assert main(["convert_imageset", "--gray", "--shuffle=true", "data/images/", "data/list.txt", str(tmp_path / "g")]) == 0
    got = lmdb_records(tmp_path / "g")
    keys = [k.decode() for k, _ in got]
    assert sorted(k[9:] for k in keys) == sorted(line.split()[0] for line in open("data/list.txt"))
    assert [k[9:] for k in keys] != [line.split()[0] for line in open("data/list.txt")]
    assert keys == sorted(keys) and keys[0].startswith("00000000_")  # numbered in the shuffled order
    image, _ = decode_datum(got[0][1], "")
    np.testing.assert_array_equal(image[0], cv2.imread(f"data/images/{keys[0][9:]}", cv2.IMREAD_GRAYSCALE))


def test_convert_imageset_skips_unreadable_images(golden_cwd, tmp_path):
    (tmp_path / "list.txt").write_text("img_00.png 0\nmissing.png 1\nimg_01.png 1\n")
    assert main(["convert_imageset", "data/images/", str(tmp_path / "list.txt"), str(tmp_path / "db")]) == 0
    assert [k for k, _ in lmdb_records(tmp_path / "db")] == [b"00000000_img_00.png", b"00000002_img_01.png"]


def test_convert_imageset_errors(golden_cwd, tmp_path, capsys):
    def error(*args):
        assert main(["convert_imageset", *args]) == 1
        return capsys.readouterr().err
    assert "data/missing.txt: cannot read the image list" in error("data/images/", "data/missing.txt",
                                                                    str(tmp_path / "x"))
    (tmp_path / "bad.txt").write_text("img_00.png 0\nimg_01.png one\n")
    assert "bad.txt:2: expected 'path label', found 'img_01.png one'" in error(
        "data/images/", str(tmp_path / "bad.txt"), str(tmp_path / "y"))
    assert "data/train_lmdb: already exists" in error("data/images/", "data/list.txt", "data/train_lmdb")
    assert "none of the 40 images could be read" in error("data/images", "data/list.txt", str(tmp_path / "z"))
    assert not (tmp_path / "z").exists()
    assert "only lmdb is supported" in error("--backend=leveldb", "data/images/", "data/list.txt", str(tmp_path / "w"))
    (tmp_path / "sizes.txt").write_text("img_00.png 0\nimg_01.png 1\n")
    cv2.imwrite(str(tmp_path / "img_00.png"), np.zeros((5, 6, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "img_01.png"), np.zeros((5, 7, 3), np.uint8))
    assert "img_01.png: image of (height, width, channels) (5, 7, 3), the first was (5, 6, 3)" in error(
        f"{tmp_path}/", str(tmp_path / "sizes.txt"), str(tmp_path / "v"), "-check_size")
    assert not (tmp_path / "v").exists()


def test_compute_image_mean_equals_caffes(golden_cwd, tmp_path, capsys):
    assert main(["compute_image_mean", "data/train_lmdb", str(tmp_path / "mean.binaryproto")]) == 0
    assert (tmp_path / "mean.binaryproto").read_bytes() == (GOLDEN / "data" / "mean.binaryproto").read_bytes()
    log = capsys.readouterr().err
    assert "Number of channels: 3" in log
    # Caffe sums each channel in float32 in pixel order, then prints 6 significant digits
    for c, value in enumerate(["39.3059", "59.9014", "59.4458"]):
        assert f"mean_value channel [{c}]: {value}\n" in log
    assert main(["compute_image_mean", "--backend", "lmdb", "data/train_lmdb_enc"]) == 0
    assert "mean_value channel [0]: 39.3059" in capsys.readouterr().err


def test_compute_image_mean_errors(golden_cwd, tmp_path, capsys):
    assert main(["compute_image_mean", "data/nope"]) == 1
    assert "data/nope: no LMDB database here" in capsys.readouterr().err


def test_compute_pca_writes_the_eigen_decomposition(golden_cwd, tmp_path, capsys):
    from protocaffe.data.pca import read_pca
    assert main(["compute_pca", "data/train_lmdb", str(tmp_path / "pca.binaryproto")]) == 0
    assert capsys.readouterr().err.count("eigenvalue [") == 3
    values, vectors = read_pca(tmp_path / "pca.binaryproto")
    assert vectors.shape == (3, 3) and values[0] >= values[1] >= values[2] > 0
    images = [decode_datum(v, "")[0] for _, v in lmdb_records("data/train_lmdb")]
    pixels = np.concatenate([img.reshape(3, -1) for img in images], 1) / 255.0
    np.testing.assert_allclose(vectors @ np.cov(pixels, bias=True) @ vectors.T, np.diag(values), atol=1e-6)
    blob = caffe_pb2.BlobProto.FromString((tmp_path / "pca.binaryproto").read_bytes())
    assert list(blob.shape.dim) == [4, 3]  # the pca_file layout: eigenvectors as rows, then eigenvalues


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros(3)])
def test_a_pca_file_of_the_wrong_shape(golden_cwd, tmp_path, bad):
    from protocaffe.fileio import array_to_blob, write_binary
    from test_data import data_net
    write_binary(array_to_blob(bad.astype(np.float32)), tmp_path / "p.binaryproto")
    with pytest.raises(Exception, match=r"layer 'data'.*pca_file: .*p.binaryproto: a PCA file holds a \(C \+ 1, C\)"):
        data_net("data/train_lmdb", f'pca_file: "{tmp_path / "p.binaryproto"}"', caffe_pb2.TRAIN)
