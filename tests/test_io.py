"""Reading and writing Caffe's files: every golden binary, blobs, Datums, bad input."""
import os

import numpy as np
import pytest

from conftest import GOLDEN
from protocaffe import io
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2

BINARIES = sorted(p for p in GOLDEN.rglob("*") if p.suffix in (".caffemodel", ".solverstate", ".binaryproto"))
TYPES = {".caffemodel": caffe_pb2.NetParameter, ".solverstate": caffe_pb2.SolverState,
         ".binaryproto": caffe_pb2.BlobProto}


@pytest.mark.parametrize("path", BINARIES, ids=lambda p: str(p.relative_to(GOLDEN)))
def test_golden_binaries_load_and_reserialize_byte_identically(path):
    msg = io.read_binary(path, TYPES[path.suffix])
    assert msg.ByteSize() > 0
    assert msg.SerializeToString() == path.read_bytes()


def test_every_kind_of_golden_binary_is_covered():
    assert {p.suffix for p in BINARIES} == set(TYPES) and len(BINARIES) >= 40


def test_blob_arrays_shape_legacy_and_double(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    blob = io.array_to_blob(a, diff=-a)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(io.blob_to_array(blob), a)
    np.testing.assert_array_equal(io.blob_to_array(blob, diff=True), -a)
    legacy = io.array_to_blob(a[0], legacy=True)
    assert (legacy.num, legacy.channels, legacy.height, legacy.width) == (1, 1, 3, 4)
    assert io.blob_to_array(legacy).shape == (1, 1, 3, 4)
    double = io.array_to_blob(a.astype(np.float64))
    assert len(double.double_data) == 24 and len(double.data) == 0
    assert io.blob_to_array(double).dtype == np.float64
    scalar = caffe_pb2.BlobProto(data=[2.5])  # Caffe writes a 0-axis blob with no shape at all
    assert io.blob_to_array(scalar).shape == ()
    with pytest.raises(CaffeError, match=r"needs 6 data values, found 5"):
        io.blob_to_array(caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2, 3]), data=[0] * 5))


def test_mean_round_trip(tmp_path):
    mean = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    io.write_mean(mean, tmp_path / "m.binaryproto")
    np.testing.assert_array_equal(io.read_mean(tmp_path / "m.binaryproto"), mean)
    assert io.read_mean(GOLDEN / "data" / "mean.binaryproto").shape == (3, 32, 32)


def test_datum_round_trips():
    img = np.random.default_rng(1).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    raw = io.array_to_datum(img, 4)
    assert (raw.channels, raw.height, raw.width, raw.label, raw.encoded) == (3, 5, 7, 4, False)
    np.testing.assert_array_equal(io.datum_to_array(raw), img)
    floats = io.array_to_datum(img.astype(np.float32) / 2, 1)
    np.testing.assert_array_equal(io.datum_to_array(floats), img.astype(np.float32) / 2)
    png = io.array_to_datum(img, 2, encode="png")
    assert png.encoded and png.data[:4] == b"\x89PNG"
    np.testing.assert_array_equal(io.datum_to_array(png), img)


def test_caffemodel_over_64_megabytes(tmp_path):
    net = caffe_pb2.NetParameter(name="big")
    layer = net.layer.add(name="fc", type="InnerProduct")
    big = np.arange(18_000_000, dtype=np.float32)  # 72 MB of weights
    io.array_to_blob(big, blob=layer.blobs.add())
    io.write_binary(net, tmp_path / "big.caffemodel")
    assert os.path.getsize(tmp_path / "big.caffemodel") > 64 * 2**20
    back = io.read_binary(tmp_path / "big.caffemodel", caffe_pb2.NetParameter)
    np.testing.assert_array_equal(io.blob_to_array(back.layer[0].blobs[0]), big)


def test_text_errors_name_file_line_and_column(tmp_path):
    bad = tmp_path / "net.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  typo: "Input"\n}\n')
    with pytest.raises(CaffeError, match=rf"^{bad}:4:3: .*typo"):
        io.read_text(bad, caffe_pb2.NetParameter)
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n')
    with pytest.raises(CaffeError, match=rf"^{bad}:\d+:\d+: "):
        io.read_text(bad, caffe_pb2.NetParameter)
    bad.write_bytes(b"\xff\xfe binary")
    with pytest.raises(CaffeError, match="not a text file"):
        io.read_text(bad, caffe_pb2.NetParameter)


def test_binary_errors(tmp_path):
    good = (GOLDEN / "nets" / "slim_caffenet.caffemodel").read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(good[: len(good) // 2])
    with pytest.raises(CaffeError, match=r"cut.caffemodel: not a valid binary NetParameter"):
        io.read_binary(tmp_path / "cut.caffemodel", caffe_pb2.NetParameter)
    (tmp_path / "junk.solverstate").write_bytes(b"\x0f\xff\xff\xff\xff\xff\xff")
    with pytest.raises(CaffeError, match="not a valid binary SolverState"):
        io.read_binary(tmp_path / "junk.solverstate", caffe_pb2.SolverState)
    with pytest.raises(CaffeError, match="is a directory"):
        io.read_binary(tmp_path, caffe_pb2.NetParameter)
    with pytest.raises(CaffeError, match="no such file"):
        io.read_binary(tmp_path / "missing.caffemodel", caffe_pb2.NetParameter)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.caffemodel"
    target.write_bytes(b"old contents")

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        io.write_binary(caffe_pb2.NetParameter(name="new"), target)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.caffemodel"]
