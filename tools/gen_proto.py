"""Regenerate protocaffe/proto/*_pb2.py from proto/caffe.proto and proto/forks/*.proto.

    python tools/gen_proto.py

protoc names a dependency by its path under proto/ (``import caffe_pb2``); the modules live
in the package protocaffe.proto, so those imports are rewritten to the package's. The tests
check that the shipped modules are exactly this script's output.
"""
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "protocaffe" / "proto"


def proto_files():
    """caffe.proto, then every fork's schema, as paths relative to proto/."""
    return ["caffe.proto"] + sorted(str(p.relative_to(PROTO)) for p in (PROTO / "forks").glob("*.proto"))


def _package_imports(text):
    text = re.sub(r"^import (\w+_pb2) as", r"from protocaffe.proto import \1 as", text, flags=re.M)
    text = re.sub(r"^from (\w+) import (\w+_pb2) as", r"from protocaffe.proto.\1 import \2 as", text, flags=re.M)
    return re.sub(r"'(\w+)\.(\w+_pb2)', _globals\)", r"'protocaffe.proto.\1.\2', _globals)", text)


def generate(out_dir):
    """Write the modules for every proto file under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={out_dir}",
                    *proto_files()], check=True, cwd=PROTO)
    written = []
    for name in proto_files():
        path = out_dir / name.replace(".proto", "_pb2.py")
        path.write_text(_package_imports(path.read_text()))
        written.append(path)
    return written


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(tmp):
            target = OUT / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
            print(f"wrote {target.relative_to(ROOT)}")
