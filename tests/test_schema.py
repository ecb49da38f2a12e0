"""proto/caffe.proto is wire-compatible with BVLC Caffe's, and the shipped module is its output."""
import ast
import csv
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor as d
from google.protobuf import descriptor_pb2

from conftest import GOLDEN
from protocaffe.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
TYPES = {v: k[len("TYPE_"):].lower() for k, v in vars(d.FieldDescriptor).items() if k.startswith("TYPE_")}


def _scope(desc):
    return desc.full_name[len("caffe."):]


def _label(f):
    return "repeated" if f.is_repeated else ("required" if f.is_required else "optional")


def _default(f):
    if not f.has_default_value:
        return ""
    value = f.default_value
    if f.type == d.FieldDescriptor.TYPE_ENUM:
        return f.enum_type.values_by_number[value].name
    return repr(value)


def our_rows():
    rows = []

    def walk(msg):
        for f in msg.fields:
            rows.append(("field", _scope(msg), f.name, str(f.number), _label(f), TYPES[f.type],
                         _scope(f.message_type or f.enum_type) if (f.message_type or f.enum_type) else "",
                         _default(f), "packed" if f.GetOptions().packed else ""))
        for e in msg.enum_types:
            rows.extend(("enum_value", _scope(e), v.name, str(v.number), "", "", "", "", "") for v in e.values)
        for nested in msg.nested_types:
            walk(nested)
    for e in caffe_pb2.DESCRIPTOR.enum_types_by_name.values():
        rows.extend(("enum_value", _scope(e), v.name, str(v.number), "", "", "", "", "") for v in e.values)
    for msg in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(msg)
    return rows


# protocaffe's own fields, numbered from 1000 up, far above Caffe's numbers in their messages
EXTENSIONS = {("SolverParameter", "plateau_output"), ("SolverParameter", "plateau_patience"),
              ("SolverParameter", "plateau_max_drops"), ("SolverParameter", "precision"),
              ("SolverState", "plateau_best"),
              ("SolverState", "plateau_wait"), ("TransformationParameter", "pca_file"),
              ("TransformationParameter", "pca_std")}
# R-FCN's PRE_FIXED normalization (its forks number it 3, BVLC's NONE; here 1000)
ENUM_EXTENSIONS = {("LossParameter.NormalizationMode", "PRE_FIXED")}


def caffe_rows():
    with open(GOLDEN / "caffe_schema.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["kind", "scope", "name", "number", "label", "type", "type_name", "default", "packed"]
    return [tuple(r) for r in rows[1:]]


def test_schema_equals_caffes_row_by_row():
    theirs = caffe_rows()
    ours = [r for r in our_rows() if (r[1], r[2]) not in (EXTENSIONS if r[0] == "field" else ENUM_EXTENSIONS)]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"row {i + 2} of caffe_schema.tsv"
    assert len(ours) == len(theirs) == 534


def test_default_rendering_samples():
    rows = {(r[1], r[2]): r for r in our_rows() if r[0] == "field"}
    assert rows["SolverParameter", "delta"][7] == "9.99999993922529e-09"  # float32 1e-8, widened
    assert rows["FillerParameter", "type"][7] == "'constant'"
    assert rows["LRNParameter", "norm_region"][7] == "ACROSS_CHANNELS"
    assert rows["BlobShape", "dim"][8] == "packed" and rows["NetParameter", "name"][7] == ""


def test_extensions_are_far_above_caffes_numbers():
    rows = our_rows()
    for scope, name in ENUM_EXTENSIONS:
        values = {r[2]: int(r[3]) for r in rows if r[0] == "enum_value" and r[1] == scope}
        caffe_max = max(v for n, v in values.items() if (scope, n) not in ENUM_EXTENSIONS)
        assert values[name] >= 1000 and values[name] > 10 * caffe_max, (scope, name)
    found = {(r[1], r[2]): int(r[3]) for r in rows if r[0] == "field" and (r[1], r[2]) in EXTENSIONS}
    assert found.keys() == EXTENSIONS
    for (message, name), number in found.items():
        caffe_max = max(int(r[3]) for r in rows if r[0] == "field" and r[1] == message
                        and (r[1], r[2]) not in EXTENSIONS)
        assert number >= 1000 and number > 10 * caffe_max, (message, name)


def _protoc(*args):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", *args,
                    str(ROOT / "proto" / "caffe.proto")], check=True)


def _without_json_names(messages):
    """protoc's descriptor sets carry json_name; the generated Python module leaves it out."""
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _without_json_names(m.nested_type)


def _shipped_serialized_descriptor():
    """The descriptor bytes written into caffe_pb2.py (the loaded pool re-renders float defaults)."""
    tree = ast.parse((ROOT / "protocaffe" / "proto" / "caffe_pb2.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", "") == "AddSerializedFile"]
    assert len(calls) == 1
    return ast.literal_eval(calls[0].args[0])


def test_shipped_descriptor_is_the_protos(tmp_path):
    _protoc(f"--descriptor_set_out={tmp_path / 'caffe.desc'}")
    fds = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "caffe.desc").read_bytes())
    assert [f.name for f in fds.file] == ["caffe.proto"]
    _without_json_names(fds.file[0].message_type)
    assert fds.file[0].SerializeToString() == _shipped_serialized_descriptor()


def test_shipped_modules_are_generated_from_the_protos(tmp_path):
    """caffe_pb2 and every fork's module are tools/gen_proto.py's output for proto/."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_proto
    finally:
        sys.path.pop(0)
    written = gen_proto.generate(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in written]
    assert names[0] == "caffe_pb2.py" and {"forks/ssd_pb2.py", "forks/segnet_pb2.py", "forks/rfcn_pb2.py"} <= set(names)
    for path in written:
        shipped = ROOT / "protocaffe" / "proto" / path.relative_to(tmp_path)
        assert path.read_text() == shipped.read_text(), shipped
