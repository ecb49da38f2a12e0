"""A user's mistake ends as one line naming the file, layer or flag: through the command line
(``protocaffe CMD: error: <message>``, exit 1, no traceback) and through the Python API (a
CaffeError whose text is that same message). Each case first: what the user did wrong."""
import textwrap

import lmdb
import numpy as np
import pytest
import torch

import protocaffe
from conftest import GOLDEN
from protocaffe.cli import main
from protocaffe.commands import classify, extract_features, parse_log, test as test_command, time as time_command
from protocaffe.data.compute_image_mean import image_mean
from protocaffe.data.pca import channel_covariance
from protocaffe.errors import CaffeError
from protocaffe.fileio import array_to_blob, parse_text
from protocaffe.proto import caffe_pb2

INPUT = 'layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n'
SOLVER = 'net: "{tmp}/net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 1 {extra}\n'
NET = INPUT.format(dims="dim: 2 dim: 3") + textwrap.dedent("""\
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
    layer { name: "loss" type: "Power" bottom: "y" top: "loss" loss_weight: 1 }
    """)


CLASSIFIER = ["--model_def", str(GOLDEN / "nets" / "slim_caffenet_deploy.prototxt"), "--pretrained_model",
              str(GOLDEN / "nets" / "slim_caffenet.caffemodel"), "--mean_file", ""]


def blobproto_lmdb(path):
    """An LMDB of BlobProtos (as a mean or a feature dump might be), not of Datums."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(3):
            txn.put(f"{i:08d}".encode(), array_to_blob(np.ones((3, 4, 4), np.float32)).SerializeToString())
    env.close()


def data_net(source):
    return ('layer { name: "data" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{source}" batch_size: 2 backend: LMDB }} }}\n')


def net_file(tmp, text):
    (tmp / "net.prototxt").write_text(text)
    return str(tmp / "net.prototxt")


def solver_file(tmp, extra):
    net_file(tmp, NET)
    (tmp / "solver.prototxt").write_text(SOLVER.format(tmp=tmp, extra=extra))
    return str(tmp / "solver.prototxt")


def caffe_net(path):
    return protocaffe.Net(path, protocaffe.TEST)


# (id, files to make: {name: text or bytes or a function of the path}, argv, the API call, what the
# message must say); "{tmp}" stands for the test's folder
CASES = [
    ("top made twice", {"net.prototxt": INPUT.format(dims="dim: 2") + (
        'layer { name: "a" type: "ReLU" bottom: "x" top: "y" }\n'
        'layer { name: "b" type: "Sigmoid" bottom: "x" top: "y" }\n')},
     ["time", "--model", "{tmp}/net.prototxt"], lambda t: caffe_net(f"{t}/net.prototxt"),
     "layer 'b' (type Sigmoid): top blob 'y' produced by multiple sources (layer 'a' made it already)"),
    ("LMDB of BlobProtos, Data layer", {"db": blobproto_lmdb, "net.prototxt": data_net("{tmp}/db")},
     ["time", "--model", "{tmp}/net.prototxt"], lambda t: caffe_net(f"{t}/net.prototxt"),
     "layer 'data' (type Data): {tmp}/db: a record is not a Datum image: it has 0 channels"),
    ("LMDB of BlobProtos, compute_image_mean", {"db": blobproto_lmdb},
     ["compute_image_mean", "{tmp}/db", "{tmp}/mean.binaryproto"], lambda t: image_mean(f"{t}/db"),
     "{tmp}/db: a record is not a Datum image: it has 0 channels (Caffe needs channels > 0)"),
    ("LMDB of BlobProtos, compute_pca", {"db": blobproto_lmdb},
     ["compute_pca", "{tmp}/db", "{tmp}/pca.binaryproto"], lambda t: channel_covariance(f"{t}/db"),
     "{tmp}/db: a record is not a Datum image: it has 0 channels"),
    ("negative Input dim", {"net.prototxt": INPUT.format(dims="dim: 2 dim: -3 dim: 4")},
     ["time", "--model", "{tmp}/net.prototxt"], lambda t: caffe_net(f"{t}/net.prototxt"),
     "layer 'in' (type Input): top 'x' would have shape (2, -3, 4): a dimension is negative"),
    ("negative DummyData dim", {"net.prototxt": 'layer { name: "d" type: "DummyData" top: "x" '
                                                'dummy_data_param { shape { dim: -1 dim: 5 } } }\n'},
     ["time", "--model", "{tmp}/net.prototxt"], lambda t: caffe_net(f"{t}/net.prototxt"),
     "layer 'd' (type DummyData): top 'x' would have shape (-1, 5): a dimension is negative"),
    ("negative Parameter dim", {"net.prototxt": 'layer { name: "p" type: "Parameter" top: "w" '
                                                'parameter_param { shape { dim: 3 dim: -2 } } }\n'},
     ["time", "--model", "{tmp}/net.prototxt"], lambda t: caffe_net(f"{t}/net.prototxt"),
     "layer 'p' (type Parameter): parameter weight would have shape (3, -2): a dimension is negative"),
    ("iter_size 0", {"solver.prototxt": lambda p: solver_file(p.parent, "iter_size: 0")},
     ["train", "--solver", "{tmp}/solver.prototxt"], lambda t: protocaffe.get_solver(f"{t}/solver.prototxt"),
     "{tmp}/solver.prototxt: iter_size must be at least 1, found 0"),
    ("average_loss 0", {"solver.prototxt": lambda p: solver_file(p.parent, "average_loss: 0")},
     ["train", "--solver", "{tmp}/solver.prototxt"], lambda t: protocaffe.get_solver(f"{t}/solver.prototxt"),
     "{tmp}/solver.prototxt: average_loss must be at least 1, found 0"),
    ("test --iterations 0", {"net.prototxt": NET},
     ["test", "--model", "{tmp}/net.prototxt", "--weights", "w", "--iterations", "0"],
     lambda t: test_command.run(["--model", f"{t}/net.prototxt", "--weights", "w", "--iterations", "0"]),
     "--iterations must be at least 1, found 0"),
    ("time --iterations 0", {"net.prototxt": NET}, ["time", "--model", "{tmp}/net.prototxt", "--iterations", "0"],
     lambda t: time_command.run(["--model", f"{t}/net.prototxt", "--iterations", "0"]),
     "--iterations must be at least 1, found 0"),
    ("time --iterations -1", {"net.prototxt": NET}, ["time", "--model", "{tmp}/net.prototxt", "--iterations=-1"],
     lambda t: time_command.run(["--model", f"{t}/net.prototxt", "--iterations=-1"]),
     "--iterations must be at least 1, found -1"),
    ("parse_log of a missing file", {}, ["parse_log", "{tmp}/none.log", "{tmp}"],
     lambda t: parse_log.parse_log(f"{t}/none.log"), "{tmp}/none.log: cannot read log (No such file or directory)"),
    ("parse_log of a binary file", {"train.log": b"I0101 \xff\xfe\x00 Solving"}, ["parse_log", "{tmp}/train.log", "{tmp}"],
     lambda t: parse_log.parse_log(f"{t}/train.log"), "{tmp}/train.log: not a text log (byte 6 is not UTF-8)"),
    ("extract_features with a non-integer batch count", {"net.prototxt": NET},
     ["extract_features", "w", "{tmp}/net.prototxt", "y", "{tmp}/f", "ten", "lmdb"],
     lambda t: extract_features.run(["w", f"{t}/net.prototxt", "y", f"{t}/f", "ten", "lmdb"]),
     "NUM_MINI_BATCHES must be a whole number, found 'ten'"),
    ("classify a file that is not an image", {"photo.png": b"not an image"},
     ["classify", "{tmp}/photo.png", "{tmp}/out.npy", *CLASSIFIER],
     lambda t: protocaffe.io.load_image(f"{t}/photo.png"), "{tmp}/photo.png: cannot read image ("),
    ("classify a .npy that is not an array", {"images.npy": b"not an array"},
     ["classify", "{tmp}/images.npy", "{tmp}/out.npy", *CLASSIFIER],
     lambda t: classify.run([f"{t}/images.npy", f"{t}/out.npy", *CLASSIFIER]),
     "{tmp}/images.npy: not a .npy array (input images): "),
]


def cli_line(argv, capsys):
    """The message of the one line ``protocaffe CMD: error: <message>`` of a command that failed
    (exit 1, no traceback)."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("protocaffe ")]
    assert "Traceback" not in err and len(ours) == 1, err
    prefix = f"protocaffe {next(a for a in argv if not a.startswith('-'))}: error: "
    assert ours[0].startswith(prefix), ours[0]
    return ours[0][len(prefix):]


def api_message(fn, *args):
    """The text of the CaffeError that ``fn(*args)`` raises."""
    with pytest.raises(CaffeError) as error:
        fn(*args)
    return str(error.value)


def make_files(tmp_path, files):
    for name, content in files.items():
        path = tmp_path / name
        if callable(content):
            content(path)
        else:
            content = content.replace("{tmp}", str(tmp_path)) if isinstance(content, str) else content
            path.write_bytes(content.encode() if isinstance(content, str) else content)


@pytest.mark.parametrize("files, argv, api, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_through_the_cli_and_the_same_caffe_error_through_the_api(
        tmp_path, capsys, monkeypatch, files, argv, api, expected):
    monkeypatch.chdir(tmp_path)
    make_files(tmp_path, files)
    message = cli_line([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert expected.replace("{tmp}", str(tmp_path)) in message
    assert api_message(api, tmp_path) == message


# ---- Caffe's rule for tops written twice (Net::AppendTop) --------------------------------------

def build(text):
    return protocaffe.build_net(parse_text(text, caffe_pb2.NetParameter))


def test_an_in_place_top_is_no_second_source():
    net = build(INPUT.format(dims="dim: 2 dim: 3") + 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
                'layer { name: "s" type: "Sigmoid" bottom: "x" top: "x" }\n')
    x = np.array([[-1.0, 0.0, 2.0]] * 2, np.float32)
    out = net(x=torch.from_numpy(x))["x"]
    np.testing.assert_allclose(out.numpy(), 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-6)


def test_in_place_means_top_i_is_bottom_i():
    """A top that repeats a bottom at another position is not in place: Caffe refuses it."""
    text = (INPUT.format(dims="dim: 2 dim: 3") + INPUT.format(dims="dim: 2 dim: 3").replace('"in"', '"in2"')
            .replace('top: "x"', 'top: "z"') + 'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "z" top: "z" }\n')
    with pytest.raises(CaffeError, match=r"layer 'e' \(type Eltwise\): top blob 'z' produced by multiple sources "
                                         r"\(layer 'in2' made it already\)"):
        build(text)


def test_one_layer_naming_a_top_twice_is_refused():
    with pytest.raises(CaffeError, match=r"layer 's' \(type Slice\): top blob 'a' produced by multiple sources "
                                         r"\(layer 's' made it already\)"):
        build(INPUT.format(dims="dim: 2 dim: 4") + 'layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "a" }\n')
