"""The command line: each subcommand, Caffe's flag spellings, bad input, logs Caffe's tools parse."""
import re
import shutil
import subprocess
import sys

import pytest
from tqdm import tqdm

from conftest import DATA, GOLDEN, HAS_CUDA

ROOT = GOLDEN.parents[2]
import protocaffe
from protocaffe import log as logs, net as netlib
from protocaffe.cli import COMMANDS, main
from protocaffe.proto import caffe_pb2
from protocaffe.solver import read_solver_param

# the regular expressions of Caffe's tools/extra/parse_log.py
PARSE_LOG = {
    "iteration": re.compile(r"Iteration (\d+)"),
    "train_loss": re.compile(r"Iteration (\d+) \(.*\), loss = ([\.\deE+-]+)"),
    "lr": re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)"),
    "output": re.compile(r"(Test|Train) net output #(\d+): (\S+) = ([\.\deE+-]+)"),
    "glog": re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] "),
}


def solver_copy(tmp_path, config="sgd_step_caffenet"):
    text = (GOLDEN / "solver" / config / "solver.prototxt").read_text()
    text = re.sub(r'snapshot_prefix: ".*"', f'snapshot_prefix: "{tmp_path}/snap"', text)
    path = tmp_path / "solver.prototxt"
    path.write_text(text)
    return path


def test_train_writes_caffe_parsable_log_and_snapshots(golden_cwd, tmp_path, capsys):
    solver = solver_copy(tmp_path)
    assert main(["train", f"--solver={solver}", "-weights", "solver/init_mini_caffenet.caffemodel",
                 "--log_dir", str(tmp_path / "logs")]) == 0
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l]
    # as in Caffe's logs, only the printed solver and net definitions span several lines
    assert all(PARSE_LOG["glog"].match(l) for l in lines if "Iteration" in l or "net output" in l)
    train = [m for m in map(PARSE_LOG["train_loss"].search, lines) if m]
    assert [int(m[1]) for m in train] == list(range(20))
    assert len([m for m in map(PARSE_LOG["lr"].search, lines) if m]) == 20
    outputs = [m for m in map(PARSE_LOG["output"].search, lines) if m]
    assert {m[1] for m in outputs} == {"Test", "Train"}
    assert (tmp_path / "snap_iter_10.caffemodel").exists() and (tmp_path / "snap_iter_20.solverstate").exists()
    logfile = next((tmp_path / "logs").iterdir())
    assert "Optimization Done." in logfile.read_text()


def test_train_resume_and_both_flags(golden_cwd, tmp_path, capsys):
    solver = solver_copy(tmp_path)
    state = GOLDEN / "solver" / "sgd_step_caffenet" / "caffe_snapshots" / "mini_caffenet_iter_10.solverstate"
    assert main(["train", "--solver", str(solver), "--snapshot", str(state)]) == 0
    assert "Iteration 10, Testing net (#0)" in capsys.readouterr().err
    assert main(["train", "--solver", str(solver), "--snapshot", str(state), "--weights", "x.caffemodel"]) == 1
    assert "not both" in capsys.readouterr().err


def test_train_errors_are_one_line(golden_cwd, tmp_path, capsys):
    assert main(["train", "--solver", "nope.prototxt"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["protocaffe train: error: nope.prototxt: no such file"]
    bad = tmp_path / "bad_solver.prototxt"
    bad.write_text('net: "solver/mini_caffenet.prototxt"\nbase_lr: 0.1\nlr_polcy: "fixed"\n')
    assert main(["train", "--solver", str(bad)]) == 1
    assert f"{bad}:3:1:" in capsys.readouterr().err
    netfile = tmp_path / "net.prototxt"
    netfile.write_text((GOLDEN / "solver" / "mini_caffenet.prototxt").read_text().replace('"LRN"', '"LRNN"'))
    good = tmp_path / "s2.prototxt"
    good.write_text(f'net: "{netfile}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\n')
    assert main(["train", "--solver", str(good)]) == 1
    assert "layer 'norm1' has type 'LRNN'" in capsys.readouterr().err
    assert main(["train", "--solver", str(good), "--gpu", "0,1"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_test_reproduces_caffe_test_log(golden_cwd, capsys):
    weights = "solver/sgd_step_alexnet/caffe_snapshots/mini_alexnet_iter_20.caffemodel"
    assert main(["test", "-model", "solver/mini_alexnet.prototxt", "-weights", weights, "-iterations", "5"]) == 0
    ours = [l.split("] ", 1)[1] for l in capsys.readouterr().err.splitlines() if "] " in l]
    theirs = [l.split("] ", 1)[1] for l in (GOLDEN / "solver" / "sgd_step_alexnet" / "caffe_test.log").read_text().splitlines()
              if "] " in l]
    wanted = [l for l in theirs if l.startswith(("Batch ", "Loss: ", "accuracy = ", "loss = "))]
    got = [l for l in ours if l.startswith(("Batch ", "Loss: ", "accuracy = ", "loss = "))]
    assert got == wanted


def test_test_needs_weights(golden_cwd, capsys):
    assert main(["test", "--model", "solver/mini_alexnet.prototxt"]) == 1
    assert "need model weights" in capsys.readouterr().err


def test_time_prints_caffes_summary(golden_cwd, capsys):
    assert main(["time", "--model", "solver/mini_caffenet.prototxt", "--iterations", "2"]) == 0
    err = capsys.readouterr().err
    for line in ("Average Forward pass: ", "Average Backward pass: ", "Average Forward-Backward: "):
        assert re.search(line + r"[\d.e+-]+ ms\.", err)
    assert re.search(r"conv1\tforward: [\d.e+-]+ ms\.", err)


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
def test_device_query_without_cuda(capsys):
    assert main(["device_query"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"\] CPU: .*, \d+ logical cores", err) and "No CUDA device found" in err
    assert main(["device_query", "--gpu", "0"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_device_query_with_cuda(capsys):
    assert main(["device_query", "--gpu", "0"]) == 0
    assert "Name:" in capsys.readouterr().err


def test_console_script_exit_codes(tmp_path):
    assert shutil.which("protocaffe"), "the console script is installed"
    done = subprocess.run(["protocaffe", "test", "--model", str(tmp_path / "none.prototxt"), "--weights", "w"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert subprocess.run([sys.executable, "-m", "protocaffe.cli", "frobnicate"], capture_output=True).returncode == 2


# ---- the guard: every failure is one line, exit 1 ---------------------------------------------

BAD_FILES = {
    "corrupt.caffemodel": bytes(range(256)) * 12,
    "relu.prototxt": 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
                     'layer { name: "r" type: "Relu" bottom: "x" top: "x" }\n',
    "malformed.prototxt": 'layer { name: "in" type: "Input" top: "x"\n  input_param { shape { dim: 1 } } }\n'
                          'layer { name "b" }\n',
    "nolmdb.prototxt": (GOLDEN / "solver" / "mini_alexnet.prototxt").read_text()
    .replace("data/train_lmdb", "missing/train_lmdb"),
    "nostep.prototxt": 'net: "solver/mini_caffenet.prototxt"\nbase_lr: 0.1\nlr_policy: "step"\nmax_iter: 2\n',
    "sigmoid.prototxt": 'net: "solver/mini_caffenet.prototxt"\nbase_lr: 0.1\nlr_policy: "sigmoid"\n'
                        'stepsize: 10\ngamma: -1\n',
}

BAD_RUNS = [
    (["train", "--solver", "none.prototxt"], "none.prototxt: no such file"),
    (["train", "--solver", "{tmp}/nostep.prototxt"], '{tmp}/nostep.prototxt: lr_policy "step" needs stepsize > 0; '
                                                     "found no stepsize"),
    (["train", "--solver", "{tmp}/sigmoid.prototxt"], 'lr_policy "sigmoid" needs gamma >= 0; found -1'),
    (["train", "--solver", "solver/sgd_step_caffenet/solver.prototxt", "--snapshot",
      "solver/init_mini_caffenet.caffemodel"], "init_mini_caffenet.caffemodel: this is a .caffemodel "
                                               "(net weights, 22 layers), not a .solverstate"),
    (["train", "--solver", "solver/sgd_step_caffenet/solver.prototxt", "--weights", "{tmp}/corrupt.caffemodel"],
     "corrupt.caffemodel: not a valid binary NetParameter"),
    (["test", "--model", "{tmp}/relu.prototxt", "--weights", "w"], "has type 'Relu', which protocaffe does not "
                                                                  "support (did you mean 'ReLU'?)"),
    (["test", "--model", "{tmp}/malformed.prototxt", "--weights", "w"], "malformed.prototxt:3:14:"),
    (["test", "--model", "solver/mini_alexnet.prototxt", "--weights", "nets/slim_caffenet.caffemodel"],
     "layer 'conv1'; shape mismatch. Source param shape is 12x3x11x11; target param shape is 8x3x5x5"),
    (["test", "--model", "solver/mini_alexnet.prototxt", "--weights", "{tmp}/corrupt.caffemodel"],
     "corrupt.caffemodel: not a valid binary NetParameter"),
    (["test", "--model", "{tmp}/nolmdb.prototxt", "--weights", "w"], "missing/train_lmdb: no LMDB database here"),
    (["test", "--model", "solver/mini_alexnet.prototxt", "--weights", "w", "--phase", "VAL"],
     "--phase must be TRAIN or TEST; found 'VAL'"),
    (["time", "--model", "{tmp}/malformed.prototxt"], "malformed.prototxt:3:14:"),
    (["time", "--model", "{tmp}/relu.prototxt"], "(did you mean 'ReLU'?)"),
    (["time", "--model", "solver/mini_alexnet.prototxt", "--weights", "{tmp}/corrupt.caffemodel"],
     "not a valid binary NetParameter"),
    (["compute_image_mean", "{tmp}/nodb", "{tmp}/mean"], "nodb: no LMDB database here"),
    (["compute_pca", "{tmp}/nodb", "{tmp}/pca"], "nodb: no LMDB database here"),
    (["convert_imageset", "{tmp}/", "{tmp}/list.txt", "{tmp}/db"], "list.txt: cannot read the image list"),
    (["upgrade_net_proto_binary", "{tmp}/corrupt.caffemodel", "{tmp}/out"], "not a valid binary NetParameter"),
    (["upgrade_net_proto_text", "{tmp}/malformed.prototxt", "{tmp}/out"], "malformed.prototxt:3:14:"),
    (["upgrade_solver_proto_text", "{tmp}/none", "{tmp}/out"], "none: no such file"),
    (["make_shapes", "--size", "3", "--out", "{tmp}/s"], "--size of 16 or more"),
    (["train", "--solvr", "s"], "unrecognized arguments: --solvr s (did you mean '--solver'?)"),
]


@pytest.mark.parametrize("argv, expected", BAD_RUNS, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in
                                                         enumerate(BAD_RUNS)])
def test_bad_input_is_one_line_and_exit_1(golden_cwd, tmp_path, capsys, argv, expected):
    for name, content in BAD_FILES.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("protocaffe ")]
    assert "Traceback" not in err and len(ours) == 1
    assert ours[0].startswith(f"protocaffe {argv[0]}: error: ")
    assert expected.replace("{tmp}", str(tmp_path)) in ours[0]


def test_unexpected_exception_is_one_line_unless_debug(monkeypatch, capsys):
    import protocaffe.commands.device_query as device_query

    def broken(argv):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(device_query, "run", broken)
    assert main(["device_query"]) == 1
    err = capsys.readouterr().err
    assert err == ("protocaffe device_query: internal error: ZeroDivisionError: division by zero "
                   "(rerun with --debug for the traceback, and please report it)\n")
    assert main(["device_query", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ZeroDivisionError("division by zero")' in err
    assert main(["--debug", "test", "--model", "none.prototxt", "--weights", "w"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_missing_example_data_names_its_data_step(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "examples" / "shapes", tmp_path / "examples" / "shapes",
                    ignore=shutil.ignore_patterns("data", "logs"))  # as in a fresh clone
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--solver", "examples/shapes/solver.prototxt"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("protocaffe train: error: ") and "examples/shapes/data" in line
    assert line.endswith("bash examples/shapes/train.sh builds it first "
                         "(its data step: protocaffe make_shapes --out examples/shapes/data)")


# ---- help, version, did you mean ---------------------------------------------------------------

def test_help_lists_every_command_with_a_description(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert re.search(rf"^  {name} +\S.*$", out, re.M), name
    assert "--debug" in out and "--version" in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_takes_help_with_defaults(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: protocaffe {name}")
    flags = [f for f in re.findall(r"^  (--?\w+)", out, re.M) if f not in ("-h", "--help")]
    assert " ".join(out.split()).count("(default: ") == len(flags)


def test_train_help_shows_gflags_defaults(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert 'what SIGINT does: stop, snapshot or none (default: "stop")' in out
    assert "the train net's level (default: 0)" in out


def test_version_is_protocaffes_and_names_the_caffe_release(capsys):
    import tomllib
    from protocaffe._version import VERSION
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"protocaffe {VERSION} (Caffe 1.0.0 compatible)\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", VERSION)
    # one source: the package metadata reads the same attribute; pycaffe scripts see Caffe's version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "protocaffe._version.VERSION"}
    assert protocaffe.__version__ == "1.0.0"


def test_mistyped_command_suggests_the_closest(capsys):
    assert main(["tset", "--model", "m"]) == 2
    assert capsys.readouterr().err == ("protocaffe: error: unknown command 'tset' (did you mean 'test'?); "
                                       "'protocaffe --help' lists the commands\n")
    assert main(["Train"]) == 2
    assert "(did you mean 'train'?)" in capsys.readouterr().err


# ---- Caffe's net-construction log -------------------------------------------------------------

NET_INIT = re.compile(r"Creating [lL]ayer|<-|->|Setting up|Top shape|with loss weight|Memory required|"
                      r"backward computation|produces output|initialization done|Ignoring source layer|"
                      r"specified by a rule in layer")


def messages(log_text):
    return [line.split("] ", 1)[1] for line in log_text.splitlines()
            if PARSE_LOG["glog"].match(line) and NET_INIT.search(line.split("] ", 1)[1])]


def test_net_construction_log_equals_caffes(golden_cwd, capsys):
    """Caffe's own `caffe test` log of the same net: every net-construction line, split layers included."""
    weights = "solver/sgd_step_alexnet/caffe_snapshots/mini_alexnet_iter_20.caffemodel"
    assert main(["test", "-model", "solver/mini_alexnet.prototxt", "-weights", weights, "-iterations", "1"]) == 0
    ours = messages(capsys.readouterr().err)
    theirs = messages((GOLDEN / "solver" / "sgd_step_alexnet" / "caffe_test.log").read_text())
    assert ours == theirs
    assert "Top shape: 8 3 32 32 (24576)" in ours and "Memory required for data: 1141224" in ours
    assert "conv1 needs backward computation." in ours and "accuracy does not need backward computation." in ours


def test_train_log_has_caffes_net_lines_and_ignored_layers(golden_cwd, tmp_path, capsys):
    """The train and test nets of a solver logged as Caffe logged them; finetuning from a
    deploy net's weights ignores the layers this net lacks."""
    solver = solver_copy(tmp_path)
    assert main(["train", f"--solver={solver}", "-weights", "solver/init_mini_caffenet.caffemodel"]) == 0
    ours = messages(capsys.readouterr().err)
    theirs = messages((GOLDEN / "solver" / "sgd_step_caffenet" / "caffe.log").read_text())
    assert ours == theirs


def test_include_and_exclude_rules_are_logged_as_caffe_logs_them(capsys):
    """Every kind of rule that fails (phase, min_level, max_level, stage, not_stage, in include
    and exclude), against a real `caffe time` log of the same net and NetState."""
    rules = DATA / "caffe_rules"
    assert main(["time", "--model", str(rules / "rules.prototxt"), "--iterations", "1",
                 "--level", "1", "--stage", "s1"]) == 0
    ours = messages(capsys.readouterr().err)
    theirs = messages((rules / "caffe_time.log").read_text())
    assert ours == theirs
    assert "The NetState level (1) is above the min_level (2) specified by a rule in layer b" in ours


def test_weights_layers_missing_from_the_net_are_ignored_as_caffe_logs(golden_cwd, tmp_path, capsys):
    """CopyTrainedLayersFrom: each source layer the net lacks gets `Ignoring source layer`, in file order."""
    weights = caffe_pb2.NetParameter()
    weights.ParseFromString((GOLDEN / "solver" / "init_mini_caffenet.caffemodel").read_bytes())
    extra = weights.layer.add(name="fc9", type="InnerProduct")
    extra.blobs.add(data=[0.5, 0.5]).shape.dim.extend([1, 2])
    (tmp_path / "w.caffemodel").write_bytes(weights.SerializeToString())
    assert main(["test", "--model", "solver/mini_caffenet.prototxt", "--weights", str(tmp_path / "w.caffemodel"),
                 "--iterations", "1"]) == 0
    ignored = [m for m in messages(capsys.readouterr().err) if m.startswith("Ignoring")]
    net_layers = {l.name for l in netlib.filter_net(netlib.read_net_param("solver/mini_caffenet.prototxt"),
                                                     caffe_pb2.NetState(phase=caffe_pb2.TEST)).layer}
    expected = [f"Ignoring source layer {l.name}" for l in weights.layer if l.name not in net_layers]
    assert ignored == expected and ignored[-1] == "Ignoring source layer fc9"


def test_log_lines_never_land_on_a_progress_bar(capsys):
    """With a bar on the terminal, a log line is written between a cleared bar and its redraw."""
    logs.setup()
    with tqdm(total=3, desc="bar", disable=False, file=sys.stderr) as bar:
        bar.update(1)
        logs.LOGGER.info("a line of the log")
    segments = re.split(r"[\r\n]", capsys.readouterr().err)
    assert any(PARSE_LOG["glog"].match(s) and s.endswith("] a line of the log") for s in segments)


def test_unset_policy_fields_are_warned_of(tmp_path, capsys):
    logs.setup()
    path = tmp_path / "s.prototxt"
    path.write_text('net: "n.prototxt"\nbase_lr: 0.1\nlr_policy: "inv"\ngamma: 0.001\n')
    read_solver_param(path)
    err = capsys.readouterr().err
    assert f'{path}: lr_policy "inv" reads power, which is not set (Caffe uses 0)' in err
    assert re.search(r"^W\d{4} ", err, re.M) and "reads gamma" not in err
