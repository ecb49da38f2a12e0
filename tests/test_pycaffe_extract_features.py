"""`protocaffe extract_features`: Caffe's arguments, an LMDB of float Datums per blob."""
import lmdb
import numpy as np
import pytest

import protocaffe
from conftest import assert_close
from protocaffe.cli import main
from protocaffe.proto import caffe_pb2


def read_db(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = [(k.decode(), caffe_pb2.Datum.FromString(v)) for k, v in txn.cursor()]
    env.close()
    return records


def test_extract_features_writes_datums(golden_cwd, tmp_path):
    fc8, label = tmp_path / "fc8_db", tmp_path / "label_db"
    argv = ["extract_features", "solver/init_mini_caffenet.caffemodel", "solver/mini_caffenet.prototxt",
            "fc8,label", f"{fc8},{label}", "2", "lmdb"]
    assert main(argv) == 0
    labels = read_db(label)
    assert [k for k, _ in labels] == [f"{i:010d}" for i in range(16)]
    listed = [int(line.split()[1]) for line in (golden_cwd / "data" / "list.txt").read_text().splitlines()]
    assert [d.float_data[0] for _, d in labels] == listed[:16]
    assert (labels[0][1].channels, labels[0][1].height, labels[0][1].width) == (1, 1, 1)
    features = read_db(fc8)
    assert (features[0][1].channels, features[0][1].height, features[0][1].width) == (4, 1, 1)
    net = protocaffe.Net("solver/mini_caffenet.prototxt", "solver/init_mini_caffenet.caffemodel", protocaffe.TEST)
    expected = np.concatenate([net.forward(blobs=["fc8"])["fc8"].copy() for _ in range(2)])
    assert_close(np.array([d.float_data for _, d in features]), expected, what="fc8 features")
    assert main(argv) == 1  # the databases exist now


@pytest.mark.parametrize("args, message", [
    (["fc8", "a,b", "1", "lmdb"], "must be equal"),
    (["fc9", "a", "1", "lmdb"], "Unknown feature blob name fc9"),
    (["fc8", "a", "1", "leveldb"], "lmdb only"),
])
def test_extract_features_errors(golden_cwd, tmp_path, capsys, args, message):
    args[1] = ",".join(str(tmp_path / n) for n in args[1].split(","))
    assert main(["extract_features", "solver/init_mini_caffenet.caffemodel",
                 "solver/mini_caffenet.prototxt"] + args) == 1
    assert message in capsys.readouterr().err
