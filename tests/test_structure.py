"""How the house is built: no import circles, one meaning per public name, an optional extra that
imports as any optional module does, and a tool that names no package mirror."""
import ast
import importlib
import os
import pkgutil
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import protocaffe
from protocaffe.errors import CaffeError

PACKAGE = Path(protocaffe.__file__).parent
ROOT = PACKAGE.parent


def _modules():
    """{module name: path} of protocaffe's own modules (not the generated _pb2 ones)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name.endswith("_pb2.py"):
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name, path, modules):
    """The protocaffe modules ``name`` imports anywhere in its file (functions included), with
    the packages on the way (importing a.b.c runs a.b's __init__) but not its own ancestors."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + [base] if base else parts)
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    edges = set()
    for target in (t for t in targets if t.startswith("protocaffe.")):
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            module = ".".join(parts[:i])
            if module in modules and module != name and not name.startswith(module + "."):
                edges.add(module)
    return edges


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_back_through_others():
    """STYLE: the house is free of circles (a module importing from its own package's
    __init__ is part of that package, not a circle)."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert {"protocaffe.layer_types", "protocaffe.data.hdf5"} <= graph["protocaffe.net"]  # the walk sees imports
    assert _cycles(graph) == []


def test_each_public_class_name_means_one_thing():
    """A public class name is defined once; ``Layer`` twice by design: the base of protocaffe's
    layer types (plugins subclass protocaffe.layer_types.Layer) and pycaffe's caffe.Layer."""
    homes = {}
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                homes.setdefault(node.name, []).append(name)
    twice = {cls: sorted(where) for cls, where in homes.items() if len(where) > 1}
    assert twice == {"Layer": ["protocaffe.layer_types.base", "protocaffe.pycaffe.layer"]}
    from protocaffe import layer_types, pycaffe, solver
    assert protocaffe.Layer is pycaffe.Layer and layer_types.Layer is layer_types.base.Layer
    assert protocaffe.Solver is pycaffe.Solver and solver.CaffeSolver is not pycaffe.Solver
    assert Counter(c.__name__ for c in (protocaffe.Layer, layer_types.Layer, pycaffe.LayerView)) == \
        {"Layer": 2, "LayerView": 1}


def test_the_onnx_extra_missing_is_an_import_error_and_a_caffe_error(monkeypatch):
    for name in [m for m in sys.modules if m.startswith("protocaffe.onnx_export")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    with pytest.raises(ImportError) as error:
        importlib.import_module("protocaffe.onnx_export")
    assert isinstance(error.value, CaffeError) and error.value.name == "onnx"
    assert str(error.value) == "ONNX export needs the onnx package: pip install -e '.[onnx]'"
    try:  # the usual optional import
        importlib.import_module("protocaffe.onnx_export")
    except ImportError:
        pass
    walked = [m.name for m in pkgutil.walk_packages(protocaffe.__path__, "protocaffe.")]
    assert "protocaffe.onnx_export" in walked and "protocaffe.solver.solver" in walked


def test_fetch_bvlc_caffe_takes_the_mirror_from_apt(tmp_path):
    """No host in the script; the mirror is the one apt lists for the machine's own release."""
    script = ROOT / "tools" / "fetch_bvlc_caffe.sh"
    assert "://" not in script.read_text()
    if not Path("/etc/os-release").exists():
        pytest.skip("no /etc/os-release on this machine")
    release = next((line.split("=", 1)[1].strip().strip('"') for line in open("/etc/os-release")
                    if line.startswith("VERSION_CODENAME=")), "")
    fake = tmp_path / "apt-get"  # apt's answer to `apt-get indextargets --format '$(RELEASE) $(REPO_URI)'`
    fake.write_text("#!/bin/sh\n[ \"$1\" = indextargets ] || exit 1\n"
                    f"echo '{release}-security http://security.mirror.test/debian-security/'\n"
                    f"echo '{release}-updates http://local.mirror.test/debian/'\n"
                    f"echo '{release} http://local.mirror.test/debian/'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = subprocess.run(["bash", str(script), "--mirror"], capture_output=True, text=True,
                         env=dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}"))
    assert out.returncode == 0 and out.stdout == "http://local.mirror.test/debian/\n"
