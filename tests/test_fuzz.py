"""Property-based fuzzing of every reader a user's file goes through.

Random bytes and mutations of the golden files (bytes replaced, inserted, deleted,
cut short) go to the prototxt reader with the upgrade paths, the binary readers
(.caffemodel, .solverstate, .binaryproto) and the LMDB Datum decoder; and, for every
registered fork dialect, to the prototxt reader with the fork's fields and to the binary
reader with the fork's renumbering (seeds from the fork's schema and golden files). The property:
each input either parses or raises ``CaffeError``, nothing else, within the deadline.

The budget per reader is small and derandomized by default (hypothesis profile ``ci``,
set in conftest.py); ``pytest tests/test_fuzz.py --hypothesis-profile=deep`` runs 5,000
random inputs per reader.
"""
import lmdb
import pytest
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GOLDEN
from test_upgrade import V0
from protocaffe import dialects, fileio, schema
from protocaffe.dialects import DIALECTS, wire
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


# ---- the forks' dialects: every registered one, its fields and its renumbering ---------------------

def _value(f):
    """A plain value for scalar field ``f``."""
    if f.cpp_type == f.CPPTYPE_ENUM:
        return f.enum_type.values[-1].number
    if f.type == f.TYPE_BYTES:
        return b"a"
    return {f.CPPTYPE_STRING: "a", f.CPPTYPE_BOOL: True, f.CPPTYPE_FLOAT: 0.5, f.CPPTYPE_DOUBLE: 0.5}.get(f.cpp_type, 1)


def _set(message, f, depth=0):
    """Field or extension ``f`` of ``message`` set to a plain value (messages filled three levels deep)."""
    current = message.Extensions[f] if f.is_extension else getattr(message, f.name)
    if f.message_type is not None:
        if depth < 3:
            _sample(current.add() if f.is_repeated else current, depth + 1)
    elif f.is_repeated:
        current.append(_value(f))
    elif f.is_extension:
        message.Extensions[f] = _value(f)
    else:
        setattr(message, f.name, _value(f))


def _sample(message, depth=0):
    for f in message.DESCRIPTOR.fields:
        _set(message, f, depth)
    return message


def _parses(text, kind):
    try:
        return fileio.parse_text(text, kind).ListFields() != []
    except CaffeError:
        return False


def _inverse(rules):
    """Renumbering rules turned around: protocaffe's numbers back to the fork's."""
    back = {}
    for (number, wire_type), target in rules.items():
        if isinstance(target, tuple):
            back[(target[0], wire_type)] = (number, _inverse(target[1]))
        else:
            back[(target, wire_type)] = number
    return back


def dialect_seeds(dialect):
    """{message class: [(text, binary in the fork's numbering)]}: one message of each type the
    dialect extends, every extension of its schema set, and the fork's golden files
    (tests/data/golden/<key>) where it has some; derived from the schema, so a dialect
    registered later is fuzzed without a word here."""
    seeds = {}
    pool = caffe_pb2.DESCRIPTOR.pool
    for extendee in (caffe_pb2.NetParameter, caffe_pb2.LayerParameter, caffe_pb2.SolverParameter,
                     caffe_pb2.SolverState, caffe_pb2.TransformationParameter):
        message = extendee()
        for ext in pool.FindAllExtensions(extendee.DESCRIPTOR):
            if ext.file.name in dialect.proto_files:
                _set(message, ext)
        if message.ListFields():
            seeds.setdefault(extendee, []).append(message)
    layer = caffe_pb2.LayerParameter()                # the forks' fields inside BVLC's parameter messages
    for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if f.message_type is not None and not f.is_repeated:
            for ext in pool.FindAllExtensions(f.message_type):
                if ext.file.name in dialect.proto_files:
                    _set(getattr(layer, f.name), ext)
    if layer.ListFields():
        seeds.setdefault(caffe_pb2.LayerParameter, []).append(layer)
    kinds = [caffe_pb2.NetParameter, caffe_pb2.SolverParameter] + [  # and the fork's own files (label maps)
        message_factory.GetMessageClass(m) for file in dialect.proto_files
        for m in pool.FindFileByName(file).message_types_by_name.values()]
    for path in _small((GOLDEN / dialect.key).rglob("*.prototxt")):
        text = path.read_text()
        kind = next(k for k in kinds if _parses(text, k))
        seeds.setdefault(kind, []).append(fileio.parse_text(text, kind))
    back = {scope: _inverse(rules) for scope, rules in dialect.moves.items()}
    return {kind: [(schema.to_text(m).encode(),
                    wire.renumber(m.SerializeToString(), kind.DESCRIPTOR, back) if back else m.SerializeToString())
                   for m in messages] for kind, messages in seeds.items()}


DIALECT_SEEDS = {key: dialect_seeds(d) for key, d in DIALECTS.items()}
DIALECT_CASES = [(key, kind) for key, seeds in DIALECT_SEEDS.items() for kind in seeds]


def _read_text_dialect(path, kind):
    if kind is caffe_pb2.NetParameter:
        _net_text(path)
    elif kind is caffe_pb2.SolverParameter:
        read_solver_param(path)
    else:
        dialects.recognise(fileio.read_text(path, kind), str(path))


@pytest.mark.parametrize("key, kind", DIALECT_CASES, ids=[f"{k}-{c.__name__}" for k, c in DIALECT_CASES])
@_fuzz
@given(data=st.data())
def test_dialect_prototxt_reader(tmp_path, key, kind, data):
    text = data.draw(mutated([t for t, _ in DIALECT_SEEDS[key][kind]]))
    _parses_or_caffe_error(_read_text_dialect, _write(tmp_path, "fork.prototxt", text), kind)


@pytest.mark.parametrize("key, kind", DIALECT_CASES, ids=[f"{k}-{c.__name__}" for k, c in DIALECT_CASES])
@_fuzz
@given(data=st.data())
def test_dialect_binary_reader_and_renumbering(tmp_path, key, kind, data):
    binary = data.draw(mutated([b for _, b in DIALECT_SEEDS[key][kind]]))
    _parses_or_caffe_error(wire.renumber, binary, kind.DESCRIPTOR, DIALECTS[key].moves)
    _parses_or_caffe_error(dialects.read_binary, _write(tmp_path, "fork.bin", binary), kind, key)
    _parses_or_caffe_error(dialects.read_binary, _write(tmp_path, "plain.bin", binary), kind)


def test_dialect_seeds_set_every_extension_and_read_back():
    """Each dialect's seeds hold each of its extensions, and its binary seeds (in the fork's own
    numbering) read back equal to the text ones."""
    for key, dialect in DIALECTS.items():
        if not dialect.proto_files:                   # a fork of layer types only (SegNet's share SSD's...)
            continue
        declared = {e.full_name for file in dialect.proto_files
                    for e in caffe_pb2.DESCRIPTOR.pool.FindFileByName(file).extensions_by_name.values()}
        found = set()
        for kind, seeds in DIALECT_SEEDS[key].items():
            for text, binary in seeds:
                parsed = fileio.parse_text(text.decode(), kind)
                _extensions_set(parsed, found)
                moved = wire.renumber(binary, kind.DESCRIPTOR, dialect.moves)
                assert fileio.parse_binary(moved, kind, "seed") == parsed
        assert declared and declared <= found, (key, declared - found)


def _extensions_set(message, found):
    """Full names of the extensions set anywhere in ``message``, added to ``found``."""
    for f, value in message.ListFields():
        if f.is_extension:
            found.add(f.full_name)
        if f.message_type is not None:
            for item in (value if f.is_repeated else (value,)):
                _extensions_set(item, found)
    return found
