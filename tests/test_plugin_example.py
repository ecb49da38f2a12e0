"""The plugin example (examples/plugin_layer) run as its README says: the shell command, the Python
snippet, an entry point, and the .proto compiled ahead of time. Each runs in its own process, as a
user's would (a plugin's layer type is registered once per process)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protocaffe import plugins
from protocaffe.errors import CaffeError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugin_layer"
README = (EXAMPLE / "README.md").read_text()


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def environment(tmp_path, pythonpath=()):
    """The environment a user has: a ``protocaffe`` command (here: this checkout's) on the PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    launcher = bin_dir / "protocaffe"
    launcher.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                        "from protocaffe.cli import main\nsys.exit(main())\n")
    launcher.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PROTOCAFFE_PLUGINS"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in pythonpath] + [str(ROOT)])
    return env


def test_the_readme_listings_are_the_example_files():
    module = (EXAMPLE / "reverse_layer.py").read_text()
    proto = (EXAMPLE / "reverse.proto").read_text()
    for listing, source in ((blocks("python")[0], module), (blocks("proto")[0], proto)):
        lines = iter(source.splitlines())
        for line in filter(None, listing.splitlines()):
            assert any(line == have for have in lines), f"README line not in the example, in order: {line!r}"


def test_the_readme_command_trains_with_the_plugin(tmp_path):
    command = blocks("sh")[0]
    assert "PROTOCAFFE_PLUGINS=reverse_layer" in command
    done = subprocess.run(["bash", "-ec", command], cwd=ROOT, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "Loaded layer plugin reverse_layer (from $PROTOCAFFE_PLUGINS)" in log
    first = float(re.search(r"Iteration 0 \(.*\), loss = (\S+)", log).group(1))
    last = float(re.search(r"Iteration 200, loss = (\S+)", log).group(1))
    assert first > 1 and last < 1e-6, (first, last)


def test_the_readme_python_snippet_prints_what_it_says(tmp_path):
    snippet = blocks("python")[1]
    expected = re.search(r"# (\[\[.*\]\])", snippet).group(1)
    done = subprocess.run([sys.executable, "-c", snippet], cwd=EXAMPLE, env=environment(tmp_path, [EXAMPLE]),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == expected


def test_an_installed_plugin_is_found_by_its_entry_point(tmp_path):
    """A distribution's entry_points.txt, as pip writes it from the README's pyproject lines."""
    toml = next(b for b in blocks("toml"))
    group, name, module = re.search(r'\[project\.entry-points\."(.+)"\]\n(\w+) = "(\w+)"', toml).groups()
    info = tmp_path / "site" / "reverse_plugin_demo-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: reverse-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}\n")
    script = ("import numpy as np, protocaffe as caffe\ncaffe.init_log()\n"
              "net = caffe.Net('deploy.prototxt', caffe.TEST)\n"
              "net.blobs['data'].data[...] = np.arange(8)\n"
              "print(net.forward()['reversed'].ravel().tolist())\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=EXAMPLE,
                          env=environment(tmp_path, [tmp_path / "site", EXAMPLE]), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    assert "Loaded layer plugin reverse_layer (from entry point 'reverse' of reverse-plugin-demo)" in done.stderr


def test_the_proto_compiled_ahead_of_time_imports_protocaffes_schema(tmp_path):
    command = next(line for line in blocks("sh")[1].splitlines() if "grpc_tools.protoc" in line)
    shutil.copy(EXAMPLE / "reverse.proto", tmp_path)
    subprocess.run(command.replace("<protocaffe>", str(ROOT)), shell=True, cwd=tmp_path, check=True)
    script = ("from protocaffe import plugins, schema\n"
              "from protocaffe.proto import caffe_pb2\n"
              "import reverse_pb2\n"
              "p = schema.parse_text('type: \"Reverse\" reverse_param { axis: 2 }', caffe_pb2.LayerParameter)\n"
              "print(schema.get(p, 'reverse_param').axis, p.SerializeToString().hex())\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment(tmp_path, [tmp_path]),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # field 10147, wire type 2: the varint 81178 = 0x9a 0xfa 0x04, then length 2 and axis (field 1) = 2
    assert done.stdout.split() == ["2", "1207526576657273659afa04020802"]


def test_a_proto_that_does_not_compile_is_one_line(tmp_path):
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto2";\nimport "caffe.proto";\n'
                   'extend caffe.LayerParameter { optional Nope x = 10148; }\n')
    with pytest.raises(CaffeError, match=r"bad.proto: protoc failed: .*Nope"):
        plugins.load_proto(bad)
