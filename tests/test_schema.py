"""proto/caffe.proto is wire-compatible with BVLC Caffe's, and the shipped module is its output."""
import csv
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor as d

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


def test_schema_equals_caffes_row_by_row():
    with open(GOLDEN / "caffe_schema.tsv") as f:
        theirs = {tuple(r) for r in list(csv.reader(f, delimiter="\t"))[1:]}
    ours = set(our_rows())
    assert sorted(theirs - ours) == [] and sorted(ours - theirs) == []
    assert len(ours) == 534


def test_shipped_module_is_generated_from_the_proto(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
                    f"--python_out={tmp_path}", str(ROOT / "proto" / "caffe.proto")], check=True)
    assert (tmp_path / "caffe_pb2.py").read_text() == (ROOT / "protocaffe" / "proto" / "caffe_pb2.py").read_text()
