"""Reading and writing Caffe's files: every golden binary, blobs, Datums, bad input, safe writes."""
import errno
import os

import lmdb
import numpy as np
import pytest
from google.protobuf.unknown_fields import UnknownFieldSet as unknown_fields_of

from conftest import GOLDEN
from protocaffe import fileio
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2

BINARIES = sorted(p for p in GOLDEN.rglob("*") if p.suffix in (".caffemodel", ".solverstate", ".binaryproto"))
TYPES = {".caffemodel": caffe_pb2.NetParameter, ".solverstate": caffe_pb2.SolverState,
         ".binaryproto": caffe_pb2.BlobProto}


# ---- golden binaries ---------------------------------------------------------

@pytest.mark.parametrize("path", BINARIES, ids=lambda p: str(p.relative_to(GOLDEN)))
def test_golden_binaries_load_and_reserialize_byte_identically(path):
    msg = fileio.read_binary(path, TYPES[path.suffix])
    assert msg.ByteSize() == path.stat().st_size
    assert msg.SerializeToString() == path.read_bytes()


def unknown_fields(msg, where="root"):
    """Where in ``msg`` (recursively over sub-messages) protobuf kept fields the schema lacks."""
    found = [where] if len(unknown_fields_of(msg)) else []
    for field, value in msg.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        items = value if field.is_repeated else [value]
        for i, item in enumerate(items):
            found += unknown_fields(item, f"{where}.{field.name}[{i}]")
    return found


@pytest.mark.parametrize("path", BINARIES, ids=lambda p: str(p.relative_to(GOLDEN)))
def test_golden_binaries_parse_with_no_unknown_field(path):
    """Protobuf keeps what the schema lacks, so a round trip alone passes for any schema."""
    assert unknown_fields(fileio.read_binary(path, TYPES[path.suffix])) == []


def test_unknown_field_check_finds_a_field_outside_the_schema():
    blob = caffe_pb2.BlobProto(data=[1.0]).SerializeToString() + bytes([0xF8, 0x3E, 0x01])  # field 999 = 1
    net = caffe_pb2.NetParameter()
    net.layer.add(name="x").blobs.add().ParseFromString(blob)
    assert unknown_fields(net) == ["root.layer[0].blobs[0]"]


def test_golden_lmdb_datums_parse_with_no_unknown_field():
    for name in ("train_lmdb", "train_lmdb_enc"):
        env = lmdb.open(str(GOLDEN / "data" / name), readonly=True, lock=False)
        with env.begin() as txn:
            for _, raw in txn.cursor():
                datum = caffe_pb2.Datum()
                datum.ParseFromString(raw)
                assert unknown_fields(datum) == []
        env.close()


def test_every_kind_of_golden_binary_is_covered():
    assert {p.suffix for p in BINARIES} == set(TYPES) and len(BINARIES) >= 40


def test_golden_caffemodel_blobs_are_arrays():
    net = fileio.read_binary(GOLDEN / "nets" / "slim_caffenet.caffemodel", caffe_pb2.NetParameter)
    conv1 = next(l for l in net.layer if l.name == "conv1")
    assert fileio.blob_to_array(conv1.blobs[0]).shape == (12, 3, 11, 11)
    assert fileio.blob_to_array(conv1.blobs[1]).shape == (12,)
    v1 = fileio.read_binary(GOLDEN / "nets" / "slim_caffenet_v1.caffemodel", caffe_pb2.NetParameter)
    fc6 = next(l for l in v1.layers if l.name == "fc6")
    assert fileio.is_legacy_blob(fc6.blobs[1]) and fileio.blob_shape(fc6.blobs[1]) == (1, 1, 1, 64)
    np.testing.assert_array_equal(fileio.blob_to_array(fc6.blobs[1]).ravel(), np.array(fc6.blobs[1].data, np.float32))


def test_solverstate_history_matches_the_net():
    folder = GOLDEN / "solver" / "sgd_step_alexnet" / "caffe_snapshots"
    state = fileio.read_binary(next(folder.glob("*_iter_20.solverstate")), caffe_pb2.SolverState)
    net = fileio.read_binary(next(folder.glob("*_iter_20.caffemodel")), caffe_pb2.NetParameter)
    assert state.iter == 20
    param_shapes = [fileio.blob_shape(b) for l in net.layer for b in l.blobs]
    assert [fileio.blob_shape(h) for h in state.history] == param_shapes


# ---- blobs -------------------------------------------------------------------

def test_blob_round_trip_with_diff():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    blob = fileio.array_to_blob(a, diff=-a)
    assert list(blob.shape.dim) == [2, 3, 4] and not fileio.is_legacy_blob(blob)
    np.testing.assert_array_equal(fileio.blob_to_array(blob), a)
    np.testing.assert_array_equal(fileio.blob_to_array(blob, diff=True), -a)
    assert fileio.blob_to_array(blob).dtype == np.float32


def test_legacy_dims():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    legacy = fileio.array_to_blob(a, legacy=True)
    assert (legacy.num, legacy.channels, legacy.height, legacy.width) == (1, 1, 3, 4)
    assert not legacy.HasField("shape")
    np.testing.assert_array_equal(fileio.blob_to_array(legacy), a.reshape(1, 1, 3, 4))
    with pytest.raises(CaffeError, match=r"4 axes at most, array has shape \(1, 2, 3, 4, 5\)"):
        fileio.array_to_blob(np.zeros((1, 2, 3, 4, 5)), legacy=True)


def test_legacy_dims_win_over_shape_as_in_caffe():
    blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[6]), num=2, channels=3, height=1, width=1,
                               data=range(6))
    assert fileio.blob_shape(blob) == (2, 3, 1, 1)
    assert fileio.blob_to_array(blob)[1, 2, 0, 0] == 5


def test_double_data_and_diff():
    a = np.linspace(0, 1, 6).reshape(2, 3)  # float64
    blob = fileio.array_to_blob(a, diff=a * 2)
    assert len(blob.double_data) == 6 and len(blob.data) == 0 and len(blob.double_diff) == 6
    back = fileio.blob_to_array(blob)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, a)
    np.testing.assert_array_equal(fileio.blob_to_array(blob, diff=True), a * 2)


def test_scalar_blob_and_wrong_counts():
    scalar = caffe_pb2.BlobProto(data=[2.5])  # Caffe writes a 0-axis blob with no shape at all
    assert fileio.blob_to_array(scalar).shape == () and float(fileio.blob_to_array(scalar)) == 2.5
    with pytest.raises(CaffeError, match=r"blob of shape \(2, 3\) needs 6 data values, found 5"):
        fileio.blob_to_array(caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2, 3]), data=[0] * 5))


def test_mean_round_trip(tmp_path):
    mean = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    fileio.write_mean(mean, tmp_path / "m.binaryproto")
    blob = fileio.read_binary(tmp_path / "m.binaryproto", caffe_pb2.BlobProto)
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)
    np.testing.assert_array_equal(fileio.read_mean(tmp_path / "m.binaryproto"), mean)
    golden = fileio.read_mean(GOLDEN / "data" / "mean.binaryproto")
    np.testing.assert_array_equal(golden, np.load(GOLDEN / "data" / "data_test.npz")["mean"].reshape(golden.shape))
    assert golden.shape == (3, 32, 32)


# ---- Datum -------------------------------------------------------------------

def test_datum_raw_and_float_round_trips():
    img = np.random.default_rng(1).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    raw = fileio.array_to_datum(img, 4)
    assert (raw.channels, raw.height, raw.width, raw.label, raw.encoded) == (3, 5, 7, 4, False)
    assert raw.data == img.tobytes()  # CHW byte order, as Caffe stores it
    np.testing.assert_array_equal(fileio.datum_to_array(raw), img)
    floats = fileio.array_to_datum(img.astype(np.float32) / 2, 1)
    assert len(floats.float_data) == img.size and not floats.data
    np.testing.assert_array_equal(fileio.datum_to_array(floats), img.astype(np.float32) / 2)
    with pytest.raises(CaffeError, match=r"Datum of shape \(3, 5, 7\) needs 105 bytes, found 104"):
        fileio.datum_to_array(caffe_pb2.Datum(channels=3, height=5, width=7, data=bytes(104)))


def test_datum_png_round_trip():
    img = np.random.default_rng(2).integers(0, 256, (3, 6, 9), dtype=np.uint8)
    png = fileio.array_to_datum(img, 2, encode="png")
    assert png.encoded and png.data[:4] == b"\x89PNG" and png.label == 2
    np.testing.assert_array_equal(fileio.datum_to_array(png), img)
    gray = fileio.array_to_datum(img[:1], encode="png")
    np.testing.assert_array_equal(fileio.datum_to_array(gray), img[:1])
    with pytest.raises(CaffeError, match="could not be decoded"):
        fileio.datum_to_array(caffe_pb2.Datum(encoded=True, data=b"not an image"))


def _records(name):
    env = lmdb.open(str(GOLDEN / "data" / name), readonly=True, lock=False)
    with env.begin() as txn:
        records = [(k.decode(), caffe_pb2.Datum.FromString(v)) for k, v in txn.cursor()]
    env.close()
    return records


def test_golden_lmdb_raw_and_png_records_decode_alike():
    raw, enc = _records("train_lmdb"), _records("train_lmdb_enc")
    labels = dict(line.split() for line in (GOLDEN / "data" / "list.txt").read_text().splitlines())
    assert len(raw) == len(enc) == len(labels) == 40
    for (key, a), (key2, b) in zip(raw, enc):
        assert key == key2 and a.label == b.label == int(labels[key.split("_", 1)[1]])
        assert not a.encoded and b.encoded
        pixels = fileio.datum_to_array(a)
        assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(fileio.datum_to_array(b), pixels, err_msg=key)


# ---- size --------------------------------------------------------------------

def test_caffemodel_over_64_megabytes(tmp_path):
    net = caffe_pb2.NetParameter(name="big")
    layer = net.layer.add(name="fc", type="InnerProduct")
    big = np.arange(18_000_000, dtype=np.float32)  # 72 MB of weights, past protobuf's old 64 MB limit
    fileio.array_to_blob(big, blob=layer.blobs.add())
    fileio.write_binary(net, tmp_path / "big.caffemodel")
    assert os.path.getsize(tmp_path / "big.caffemodel") > 70 * 10**6
    back = fileio.read_binary(tmp_path / "big.caffemodel", caffe_pb2.NetParameter)
    assert back.layer[0].name == "fc"
    np.testing.assert_array_equal(fileio.blob_to_array(back.layer[0].blobs[0]), big)


# ---- text --------------------------------------------------------------------

def test_text_round_trip(tmp_path):
    solver = caffe_pb2.SolverParameter(net="n.prototxt", base_lr=0.01, stepvalue=[10, 20], type="Adam")
    fileio.write_text(solver, tmp_path / "s.prototxt")
    assert fileio.read_text(tmp_path / "s.prototxt", caffe_pb2.SolverParameter) == solver
    net = fileio.parse_text("layer { name: 'a' type: 'ReLU' bottom: 'x' top: 'x' }", caffe_pb2.NetParameter)
    assert net.layer[0].type == "ReLU"


@pytest.mark.parametrize("text, line, col, what", [
    ('name: "x"\nlayer {\n  name: "a"\n  typo: "Input"\n}\n', 4, 3, "typo"),
    ('name: "x"\nlayer {\n  name: "a"\n', 3, 9, "Expected \"}\""),
    ('layer {\n  name: "p"\n  pooling_param { pool: MEDIAN }\n}\n', 3, 25, "MEDIAN"),
    ('layer {\n  name: "a" name: "b"\n}\n', 2, 19, "multiple \"name\""),
])
def test_text_errors_name_file_line_and_column(tmp_path, text, line, col, what):
    bad = tmp_path / "net.prototxt"
    bad.write_text(text)
    with pytest.raises(CaffeError) as e:
        fileio.read_text(bad, caffe_pb2.NetParameter)
    message = str(e.value)
    assert message.startswith(f"{bad}:{line}:{col}: ") and what in message and "\n" not in message


def test_text_file_that_is_not_text(tmp_path):
    bad = tmp_path / "net.prototxt"
    bad.write_bytes(b"\xff\xfe binary")
    with pytest.raises(CaffeError, match=rf"^{bad}: not a text file \(byte 0 is not UTF-8\)"):
        fileio.read_text(bad, caffe_pb2.NetParameter)


# ---- bad binaries and paths ----------------------------------------------------

def test_truncated_and_corrupt_binaries(tmp_path):
    good = (GOLDEN / "nets" / "slim_caffenet.caffemodel").read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(good[: len(good) // 2])
    with pytest.raises(CaffeError, match=rf"^{tmp_path}/cut.caffemodel: not a valid binary NetParameter "
                                         rf"\({len(good) // 2} bytes"):
        fileio.read_binary(tmp_path / "cut.caffemodel", caffe_pb2.NetParameter)
    (tmp_path / "junk.solverstate").write_bytes(b"\x0f\xff\xff\xff\xff\xff\xff")
    with pytest.raises(CaffeError, match="junk.solverstate: not a valid binary SolverState"):
        fileio.read_binary(tmp_path / "junk.solverstate", caffe_pb2.SolverState)


@pytest.mark.parametrize("read", [
    lambda p: fileio.read_binary(p, caffe_pb2.NetParameter),
    lambda p: fileio.read_text(p, caffe_pb2.NetParameter),
    fileio.read_mean,
], ids=["binary", "text", "mean"])
def test_directory_and_missing_file(tmp_path, read):
    with pytest.raises(CaffeError, match=rf"^{tmp_path}: is a directory, expected a file$"):
        read(tmp_path)
    with pytest.raises(CaffeError, match=rf"^{tmp_path}/missing: no such file$"):
        read(tmp_path / "missing")


# ---- writes --------------------------------------------------------------------

def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.caffemodel"
    target.write_bytes(b"old contents")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(CaffeError, match=rf"^{target}: cannot write: No space left on device$"):
        fileio.write_binary(caffe_pb2.NetParameter(name="new"), target)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.caffemodel"]  # no temporary file left behind


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "net.prototxt"
    target.write_text('name: "old"\n')

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fileio.write_text(caffe_pb2.NetParameter(name="new"), target)
    assert target.read_text() == 'name: "old"\n' and len(list(tmp_path.iterdir())) == 1


def test_write_into_a_missing_folder_or_onto_a_directory(tmp_path):
    with pytest.raises(CaffeError, match=rf"^{tmp_path}/no/such.caffemodel: folder {tmp_path}/no does not exist"):
        fileio.write_binary(caffe_pb2.NetParameter(), tmp_path / "no" / "such.caffemodel")
    with pytest.raises(CaffeError, match=rf"^{tmp_path}: is a directory, cannot write a file there"):
        fileio.write_text(caffe_pb2.NetParameter(), tmp_path)


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        fileio.write_binary(caffe_pb2.NetParameter(name="n"), tmp_path / "w.caffemodel")
    finally:
        os.umask(umask)
    assert (tmp_path / "w.caffemodel").stat().st_mode & 0o777 == 0o644
