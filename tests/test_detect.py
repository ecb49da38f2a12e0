"""``protocaffe detect`` (the SSD fork's ssd_detect): its lines against the net's detection_out
computed through pycaffe's Net on the same image (preprocessed by hand as the fork's Detector
does) and through OpenCV 4's Caffe importer; the drawn images; one-line errors."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from protocaffe.cli import main
from protocaffe.net import build_net
from protocaffe.pycaffe import TEST, Net

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "examples" / "shapes_ssd" / "deploy.prototxt"
MEAN, SCALE = 127.5, 0.007843


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The shapes detector's deploy net with seeded random weights, a 64x64 and an 80x100 image."""
    folder = tmp_path_factory.mktemp("detect")
    build_net(str(DEPLOY), seed=5).save(str(folder / "w.caffemodel"))
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (64, 64, 3)), ("b.jpg", (80, 100, 3))):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        cv2.circle(img, (30, 30), 15, (20, 200, 40), -1)
        cv2.imwrite(str(folder / name), img)
    return folder


def expected_lines(folder, name, threshold):
    """The fork's lines from pycaffe's Net on the image resized, minus the mean, times the scale;
    and the scores of all the net's boxes."""
    img = cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)
    x = (cv2.resize(img, (64, 64)).astype(np.float32) - np.float32(MEAN)) * np.float32(SCALE)
    net = Net(str(DEPLOY), str(folder / "w.caffemodel"), TEST)
    net.blobs["data"].data[...] = x.transpose(2, 0, 1)[None]
    rows = net.forward()["detection_out"].reshape(-1, 7)
    rows = rows[rows[:, 0] != -1]
    h, w = np.float32(img.shape[0]), np.float32(img.shape[1])
    return rows[:, 2], [f"{folder / name} {int(r[1])} {float(r[2]):g} {int(r[3] * w)} {int(r[4] * h)} "
                        f"{int(r[5] * w)} {int(r[6] * h)}" for r in rows if r[2] >= threshold]


def detect(folder, *flags):
    return main(["detect", str(DEPLOY), str(folder / "w.caffemodel"), *flags,
                 "--mean_value", "127.5", "--normalize_value", str(SCALE)])


def test_lines_are_the_nets_detections_in_pixels(model, tmp_path):
    scores_a, _ = expected_lines(model, "a.png", 0)
    scores_b, _ = expected_lines(model, "b.jpg", 0)
    threshold = round(float(min(np.median(scores_a), np.median(scores_b))), 4)  # drops some boxes of each
    (tmp_path / "list.txt").write_text(f"{model / 'a.png'}\n{model / 'b.jpg'}\n")
    assert detect(model, str(tmp_path / "list.txt"), "--out_file", str(tmp_path / "out.txt"),
                  "--confidence_threshold", str(threshold)) == 0
    lines = (tmp_path / "out.txt").read_text().splitlines()
    _, a = expected_lines(model, "a.png", threshold)
    _, b = expected_lines(model, "b.jpg", threshold)
    assert a and b and len(lines) == len(a + b) < len(scores_a) + len(scores_b)
    for mine, theirs in zip(lines, a + b):
        mine, theirs = mine.split(), theirs.split()
        assert mine[:2] == theirs[:2] and mine[3:] == theirs[3:]  # image, label, pixel corners
        assert float(mine[2]) == pytest.approx(float(theirs[2]), rel=1e-5)  # the 6-digit score


def test_lines_agree_with_opencv(model, capsys):
    """OpenCV's importer, given the image resized as the fork resizes it (8-bit, bilinear) and
    its own mean and scale (blobFromImage), finds the same boxes. The example's prior sizes are
    integers: the fork (and protocaffe) truncate min_size and max_size, OpenCV does not."""
    assert detect(model, str(model / "b.jpg"), "--confidence_threshold", "0.3") == 0
    mine = np.array(sorted([float(v) for v in line.split()[1:]] for line in capsys.readouterr().out.splitlines()))
    net = cv2.dnn.readNetFromCaffe(str(DEPLOY), str(model / "w.caffemodel"))
    img = cv2.imread(str(model / "b.jpg"))
    net.setInput(cv2.dnn.blobFromImage(cv2.resize(img, (64, 64)), SCALE, (64, 64), (MEAN,) * 3))
    rows = net.forward().reshape(-1, 7)
    rows = rows[rows[:, 2] >= 0.3]
    theirs = np.array(sorted(np.column_stack([rows[:, 1], rows[:, 2], rows[:, 3:] * [100, 80, 100, 80]]).tolist()))
    assert len(mine) and mine.shape == theirs.shape
    np.testing.assert_allclose(mine[:, :2], theirs[:, :2], atol=1e-4)
    np.testing.assert_allclose(mine[:, 2:], theirs[:, 2:], atol=1.01)  # pixels truncated


def test_draws_each_image_and_a_tile(model, tmp_path):
    labelmap = tmp_path / "labelmap.prototxt"
    labelmap.write_text('item { name: "none" label: 0 } item { name: "circle" label: 1 }')
    assert detect(model, str(model / "b.jpg"), "--confidence_threshold", "0.3", "--draw_dir",
                  str(tmp_path / "drawn"), "--tile", str(tmp_path / "tile.png"),
                  "--label_map_file", str(labelmap)) == 0
    drawn = cv2.imread(str(tmp_path / "drawn" / "b.jpg"))
    assert drawn.shape == (200, 250, 3)  # enlarged to 200 pixels on the short side
    plain = cv2.resize(cv2.imread(str(model / "b.jpg")), (250, 200), interpolation=cv2.INTER_NEAREST)
    assert (np.abs(drawn.astype(int) - plain).max(axis=2) > 60).mean() > 0.01  # boxes and labels drawn
    assert cv2.imread(str(tmp_path / "tile.png")).shape == (204, 254, 3)


@pytest.mark.parametrize("case, expected", [
    ("missing image", "nope.jpg: no such image or list file"),
    ("bad image in list", "bad.jpg: unable to decode the image"),
    ("no detection output", "expected a net whose output comes from a DetectionOutput layer"),
    ("two means", "cannot give --mean_file and --mean_value at the same time"),
])
def test_errors_are_one_line_naming_the_file(model, tmp_path, capsys, case, expected):
    (tmp_path / "bad.jpg").write_text("not an image")
    (tmp_path / "list.txt").write_text(f"{model / 'a.png'} {tmp_path / 'bad.jpg'}\n")
    text = DEPLOY.read_text()
    (tmp_path / "nodet.prototxt").write_text(text[:text.index('layer { name: "mbox_conf_reshape"')])
    weights = str(model / "w.caffemodel")
    argv = {"missing image": [str(DEPLOY), weights, str(tmp_path / "nope.jpg")],
            "bad image in list": [str(DEPLOY), weights, str(tmp_path / "list.txt")],
            "no detection output": [str(tmp_path / "nodet.prototxt"), weights, str(model / "a.png")],
            "two means": [str(DEPLOY), weights, str(model / "a.png"), "--mean_file", "m.binaryproto"]}[case]
    assert main(["detect", *argv]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the log lines, if logging is set up
    assert last.startswith("protocaffe detect: error: ") and expected in last and "Traceback" not in err
