"""Ten-crop testing and ensembles equal their definitions computed by hand on a tiny net."""
import numpy as np
import pytest
import torch

from conftest import GOLDEN as G
from protocaffe.cli import main
from protocaffe.data.db import Cursor, decode_datum
from protocaffe.evaluate import _heads, predict, score_averaged, score_heads, ten_crops
from protocaffe.fileio import read_mean
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2

NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { crop_size: 28 scale: 0.015625 mean_file: "data/mean.binaryproto" }
        data_param { source: "data/train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture
def tiny(golden_cwd, tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    paths = []
    for seed in (1, 2):
        net = build_net(str(tmp_path / "net.prototxt"), caffe_pb2.TEST, seed=seed)
        net.save(tmp_path / f"w{seed}.caffemodel")
        paths.append(str(tmp_path / f"w{seed}.caffemodel"))
    return str(tmp_path / "net.prototxt"), paths


def by_hand(model, weight_files, batches=2):
    """Read the records, subtract the mean, scale, take ten crops, apply each net's IP, average softmax."""
    cursor = Cursor("data/train_lmdb")
    mean = read_mean("data/mean.binaryproto")
    acc = loss = 0.0
    for _ in range(batches):
        recs = [decode_datum(cursor.next()[1], "") for _ in range(8)]
        images = np.stack([(r[0] - mean) * 0.015625 for r in recs]).astype(np.float32)
        labels = np.array([r[1] for r in recs])
        crops = []
        for y, x in [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]:
            crops.append(images[:, :, y:y + 28, x:x + 28])
        crops += [c[..., ::-1] for c in crops]
        probs = 0
        for path in weight_files:
            net = build_net(model, caffe_pb2.TEST, weights=path)
            w = net.layer_by_name()["ip"].weight.detach().numpy().astype(np.float64)
            b = net.layer_by_name()["ip"].bias.detach().numpy().astype(np.float64)
            per_crop = []
            for c in crops:
                logits = c.reshape(8, -1) @ w.T + b
                e = np.exp(logits - logits.max(1, keepdims=True))
                per_crop.append(e / e.sum(1, keepdims=True))
            probs = probs + np.mean(per_crop, axis=0)
        probs /= len(weight_files)
        acc += np.mean(probs.argmax(1) == labels)
        loss += np.mean(-np.log(probs[np.arange(8), labels]))
    return acc / batches, loss / batches


def test_ten_crops_order():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    crops = ten_crops(x, 3).reshape(2, 10, 1, 3, 3)
    assert torch.equal(crops[1, 0], x[1, :, :3, :3])
    assert torch.equal(crops[1, 3], x[1, :, 1:, 2:])
    assert torch.equal(crops[1, 4], x[1, :, :3, 1:4])
    assert torch.equal(crops[0, 7], x[0, :, 1:, :3].flip(-1))


def test_oversampled_ensemble_equals_hand_computation(tiny):
    model, weights = tiny
    nets = [build_net(model, caffe_pb2.TEST, weights=w) for w in weights]
    got = score_averaged(nets, 2, oversample=True)
    acc, loss = by_hand(model, weights)
    assert got["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    single = score_averaged(nets[:1], 2, oversample=True)
    assert single["loss"] == pytest.approx(by_hand(model, weights[:1])[1], rel=1e-5)


def test_cli_oversample_and_ensemble(tiny, capsys):
    model, weights = tiny
    assert main(["test", "--model", model, "--weights", weights[0], "--ensemble", weights[1],
                 "--oversample", "--iterations", "2"]) == 0
    err = capsys.readouterr().err
    acc, loss = by_hand(model, weights)
    assert f"accuracy = {acc:.6g}" in err
    assert f"loss = {loss:.6g}" in err


def test_predict_on_a_deploy_net():
    net = build_net(str(G / "nets" / "slim_caffenet_deploy.prototxt"), caffe_pb2.TEST,
                    weights=str(G / "nets" / "slim_caffenet.caffemodel"))
    ref = np.load(G / "nets" / "slim_caffenet.npz")
    single = predict(net, torch.from_numpy(ref["blob_data"]))
    np.testing.assert_allclose(single.numpy(), ref["blob_prob"], rtol=1e-4, atol=1e-6)
    big = torch.nn.functional.pad(torch.from_numpy(ref["blob_data"]), (2, 2, 2, 2))
    probs = predict([net, net], big, crop=227)
    crops = ten_crops(big, 227)
    by_crop = net(data=crops)["prob"].detach()
    np.testing.assert_allclose(probs.numpy(), by_crop.mean(0, keepdim=True).numpy(), rtol=1e-5)


HEADS = """
layer { name: "in" type: "Input" top: "p" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "acc" type: "Accuracy" bottom: "p" bottom: "label" top: "accuracy"
        accuracy_param { ignore_label: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "p" bottom: "label" top: "loss"
        loss_param { ignore_label: 2 } }
"""


def test_averaged_scores_follow_caffes_accuracy_ties_and_ignore_label(tmp_path):
    (tmp_path / "heads.prototxt").write_text(HEADS)
    heads = _heads(build_net(str(tmp_path / "heads.prototxt"), caffe_pb2.TEST))
    probs = torch.tensor([[0.4, 0.4, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    labels = torch.tensor([1, 0, 1, 2])
    got = score_heads(heads, probs, labels)
    # row 0 ties with class 0 and counts as wrong (Caffe's >=); row 3 carries the ignored label
    assert got["accuracy"] == pytest.approx(1 / 3)
    assert got["loss"] == pytest.approx(-(np.log(0.4) + np.log(0.5) + np.log(0.3)) / 3, rel=1e-6)


def test_cli_test_honours_phase(tiny, capsys):
    model, weights = tiny
    assert main(["test", "--model", model, "--weights", weights[0], "--phase", "TRAIN", "--iterations", "1"]) == 0
    assert "phase: TRAIN" in capsys.readouterr().err
    assert main(["test", "--model", model, "--weights", weights[0], "--phase", "train"]) == 1
    assert "--phase must be TRAIN or TEST; found 'train'" in capsys.readouterr().err
