"""Property-based fuzzing of every reader a user's file goes through.

Random bytes and mutations of the golden files (bytes replaced, inserted, deleted,
cut short) go to the prototxt reader with the upgrade paths, the binary readers
(.caffemodel, .solverstate, .binaryproto) and the LMDB Datum decoder. The property:
each input either parses or raises ``CaffeError``, nothing else, within the deadline.

The budget per reader is small and derandomized by default (hypothesis profile ``ci``,
set in conftest.py); ``pytest tests/test_fuzz.py --hypothesis-profile=deep`` runs 5,000
random inputs per reader.
"""
import lmdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GOLDEN
from test_upgrade import V0
from protocaffe import fileio
from protocaffe.data.db import decode_datum
from protocaffe.errors import CaffeError
from protocaffe.net import filter_net, net_state, read_net_param, read_weights_param
from protocaffe.proto import caffe_pb2
from protocaffe.solver.solver import read_solver_param
from protocaffe.upgrade import upgrade_net


def _small(paths, limit=64_000):
    return sorted(p for p in paths if p.stat().st_size <= limit)


V0_TEXT = V0.encode()
V0_BINARY = fileio.parse_text(V0, caffe_pb2.NetParameter).SerializeToString()
TEXT_NETS = _small([*GOLDEN.glob("nets/*.prototxt"), *GOLDEN.glob("layers/*/net.prototxt"),
                    *GOLDEN.glob("solver/*.prototxt")]) + [V0_TEXT]
TEXT_SOLVERS = _small(GOLDEN.glob("solver/*/solver.prototxt"))
MODELS = _small([*GOLDEN.glob("layers/*/weights.caffemodel"),
                 *GOLDEN.glob("solver/*/caffe_snapshots/*.caffemodel")]) + [V0_BINARY]
STATES = _small(GOLDEN.glob("solver/*/caffe_snapshots/*.solverstate"))
MEANS = _small(GOLDEN.glob("data/*.binaryproto"))


def _datum_records():
    records = []
    for db in ("train_lmdb", "train_lmdb_enc"):
        with lmdb.open(str(GOLDEN / "data" / db), readonly=True, lock=False) as env, env.begin() as txn:
            records.extend(value for _, value in zip(range(3), txn.cursor().iternext(keys=False, values=True)))
    return records


DATUMS = _datum_records()


@st.composite
def mutated(draw, seeds):
    """A seed's bytes with a few random edits, or (one time in ten) random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2048))
    seed = draw(st.sampled_from(seeds))
    data = bytearray(seed.read_bytes() if hasattr(seed, "read_bytes") else seed)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "replace" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def _fuzz(fn):
    """A hypothesis test that may use pytest's tmp_path (a fresh file name per input)."""
    return settings(suppress_health_check=[HealthCheck.function_scoped_fixture])(fn)


def _parses_or_caffe_error(fn, *args):
    try:
        fn(*args)
    except CaffeError as e:
        assert str(e), "a CaffeError needs a message"


def _write(tmp_path, name, data):
    path = tmp_path / name  # one file name, rewritten for each input
    path.write_bytes(data)
    return path


def read_net_param_text(data):
    return upgrade_net(fileio.parse_text(data.decode(), caffe_pb2.NetParameter), "v0")


def _net_text(path):
    param = read_net_param(path)            # parse and upgrade V0/V1
    filter_net(param, net_state(param, caffe_pb2.TRAIN))


def _net_binary(path):
    read_weights_param(path)                # parse and upgrade; blobs decode below
    for layer in fileio.read_binary(path, caffe_pb2.NetParameter).layer:
        for blob in layer.blobs:
            fileio.blob_to_array(blob)


def _solverstate(path):
    for blob in fileio.read_binary(path, caffe_pb2.SolverState).history:
        fileio.blob_to_array(blob)


@_fuzz
@given(data=mutated(TEXT_NETS))
def test_net_prototxt_reader(tmp_path, data):
    _parses_or_caffe_error(_net_text, _write(tmp_path, "net.prototxt", data))


@_fuzz
@given(data=mutated(TEXT_SOLVERS))
def test_solver_prototxt_reader(tmp_path, data):
    _parses_or_caffe_error(read_solver_param, _write(tmp_path, "solver.prototxt", data))


@_fuzz
@given(data=mutated(MODELS))
def test_caffemodel_reader(tmp_path, data):
    _parses_or_caffe_error(_net_binary, _write(tmp_path, "w.caffemodel", data))


@_fuzz
@given(data=mutated(STATES))
def test_solverstate_reader(tmp_path, data):
    _parses_or_caffe_error(_solverstate, _write(tmp_path, "s.solverstate", data))


@_fuzz
@given(data=mutated(MEANS))
def test_binaryproto_reader(tmp_path, data):
    _parses_or_caffe_error(fileio.read_mean, _write(tmp_path, "mean.binaryproto", data))


@_fuzz
@given(data=mutated(DATUMS))
def test_datum_decoder(data):
    _parses_or_caffe_error(decode_datum, data, "db")


def test_seeds_are_golden_files():
    """The fuzzers start from real files of every kind, which parse unchanged."""
    assert len(TEXT_NETS) > 50 and TEXT_SOLVERS and MODELS and STATES and MEANS and len(DATUMS) == 6
    for path in TEXT_NETS[:5]:
        _net_text(path)
    assert [layer.type for layer in read_net_param_text(V0_TEXT).layer][:3] == ["Input", "Data", "Convolution"]
    for path in MODELS[:3]:
        _net_binary(path)
    _solverstate(STATES[0])
    assert fileio.read_mean(MEANS[0]).shape[0] == 3
    assert all(decode_datum(d, "db")[0].ndim == 3 for d in DATUMS)
