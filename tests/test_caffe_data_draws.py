"""Caffe's own random crops and mirrors: under a solver random_seed, a TRAIN net's Data layers
draw what Caffe's DataTransformer draws (tests/data/caffe_data_draws, real `caffe train` logs)."""
import re
import shutil

import numpy as np
import pytest

from conftest import DATA
from protocaffe.cli import main
from protocaffe import caffe_random
from protocaffe.data import transform

FOLDER = DATA / "caffe_data_draws"
LOSS = re.compile(r"Iteration (\d+) .*loss = (\S+)")


def losses(log):
    return {int(i): float(v) for i, v in LOSS.findall(log)}


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("name", ["one_layer", "two_layers"])
def test_random_crops_and_mirrors_are_caffes(name, workers, tmp_path, monkeypatch, capsys):
    shutil.copytree(FOLDER, tmp_path / "case")
    monkeypatch.chdir(tmp_path / "case")
    monkeypatch.setenv("PROTOCAFFE_DATA_WORKERS", workers)
    monkeypatch.setattr(transform, "_STREAMS", {})
    assert main(["train", "--solver", f"{name}_solver.prototxt", "--weights", f"{name}.caffemodel"]) == 0
    ours = losses(capsys.readouterr().err)
    caffe = losses((FOLDER / f"caffe_train_{name}.log").read_text())
    assert sorted(caffe) == list(range(12)) and set(caffe) <= set(ours)
    np.testing.assert_allclose([ours[i] for i in caffe], list(caffe.values()), rtol=2e-5)


def test_another_seed_gives_other_crops(tmp_path, monkeypatch, capsys):
    shutil.copytree(FOLDER, tmp_path / "case")
    monkeypatch.chdir(tmp_path / "case")
    solver = (tmp_path / "case" / "one_layer_solver.prototxt")
    solver.write_text(solver.read_text().replace("random_seed: 7", "random_seed: 8"))
    assert main(["train", "--solver", "one_layer_solver.prototxt", "--weights", "one_layer.caffemodel"]) == 0
    ours = losses(capsys.readouterr().err)
    caffe = losses((FOLDER / "caffe_train_one_layer.log").read_text())
    assert not np.allclose([ours[i] for i in range(4)], [caffe[i] for i in range(4)], rtol=1e-3)


def test_the_stream_is_caffes_mt19937_and_addressed_by_position():
    stream = caffe_random.Stream(7)
    first = stream.raw(0, 6)
    assert int(first[0]) == 327741615  # std::mt19937(7)'s first output (checked with g++)
    again = caffe_random.Stream(7)
    assert np.array_equal(again.raw(4, 2), first[4:]) and np.array_equal(again.raw(1, 2), first[1:3])


def test_image_data_shuffles_and_skips_as_caffes_image_data_layer(tmp_path):
    """ImageData under a seed takes, as image_data_layer.cpp does: InitRand's value, the
    shuffle's seed, the skip (value % rand_skip), InitRand's again, the thread's; the list is
    shuffled by caffe::shuffle at setup and again at each wrap. (Our reference Caffe build
    cannot read images, so this checks the wiring; caffe::shuffle itself is checked against
    Boost in test_caffe_random.py.)"""
    import cv2
    from protocaffe import TRAIN
    from protocaffe.net import build_net
    n = 7
    for i in range(n):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((6, 6, 3), i * 30, np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(n)))
    (tmp_path / "net.prototxt").write_text(f'''
layer {{ name: "images" type: "ImageData" top: "data" top: "label"
  transform_param {{ mirror: true crop_size: 4 }}
  image_data_param {{ source: "{tmp_path / 'list.txt'}" root_folder: "{tmp_path}/" batch_size: 3
                      shuffle: true rand_skip: 5 }} }}''')
    net = build_net(str(tmp_path / "net.prototxt"), TRAIN, seed=3)
    net.layers["images"].workers = 0
    labels = [int(v) for _ in range(5) for v in net()["label"].tolist()]
    values = caffe_random.Stream(3).raw(0, 5)
    shuffle_stream, skip = caffe_random.Stream(int(values[1])), int(values[2]) % 5
    order = caffe_random.shuffle(list(range(n)), shuffle_stream)
    expected = order[skip:]
    while len(expected) < len(labels):
        order = caffe_random.shuffle(order, shuffle_stream)
        expected += order
    assert labels == expected[:len(labels)]
    assert net.layers["images"].pipeline.augment.caffe_seed == int(values[3])
