"""The built-in dataset and the example: data as described, and a short training run that learns."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from protocaffe.cli import main
from protocaffe.data.db import Cursor, decode_datum
from protocaffe.datasets.shapes import CLASSES, make_shapes
from protocaffe.fileio import read_mean
from protocaffe.solver import get_solver

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "data"
    make_shapes(str(out), train=600, val=120, size=64, seed=3)
    return out


def records(path, n):
    cursor = Cursor(str(path))
    return [decode_datum(cursor.next()[1], str(path)) for _ in range(n)]


def test_dataset_records_labels_and_mean(shapes):
    train = records(shapes / "train_lmdb", 600)
    assert all(img.shape == (3, 64, 64) and img.dtype == np.uint8 for img, _ in train)
    counts = np.bincount([label for _, label in train], minlength=len(CLASSES))
    assert counts.tolist() == [100] * len(CLASSES)
    mean = np.mean([img.astype(np.float64) for img, _ in train], axis=0)
    np.testing.assert_allclose(read_mean(shapes / "mean.binaryproto"), mean, rtol=1e-5)
    assert (shapes / "labels.txt").read_text().splitlines()[0] == "0 circle"


def test_dataset_is_deterministic(shapes, tmp_path):
    make_shapes(str(tmp_path / "again"), train=600, val=120, size=64, seed=3)
    a = records(shapes / "val_lmdb", 10)
    b = records(tmp_path / "again" / "val_lmdb", 10)
    assert all(np.array_equal(x, y) and la == lb for (x, la), (y, lb) in zip(a, b))


def test_make_shapes_refuses_to_overwrite(shapes, capsys):
    assert main(["make_shapes", "--out", str(shapes)]) == 1
    assert "already holds a dataset" in capsys.readouterr().err


def readme_figure():
    """The validation accuracy the README promises for the example, as a fraction."""
    found = re.search(r"ending\s+above\s+(\d+)%\s+validation\s+accuracy", (ROOT / "README.md").read_text())
    assert found, "the README states the example's figure"
    return int(found[1]) / 100


@pytest.mark.slow
def test_example_reaches_the_readme_figure(tmp_path, monkeypatch):
    """The README's run, in full: make_shapes' default dataset, the example's net and solver
    (random_seed 1, so the run is the same each time); the last test round on all 600
    validation images must reach the README's figure."""
    shutil.copytree(ROOT / "examples" / "shapes", tmp_path / "examples" / "shapes",
                    ignore=shutil.ignore_patterns("data", "logs"))  # as in a fresh clone
    monkeypatch.chdir(tmp_path)
    assert main(["make_shapes"]) == 0
    solver = get_solver("examples/shapes/solver.prototxt")
    solver.param.snapshot_after_train = False
    solver.solve()
    accuracy = solver.test(0)["accuracy"]
    assert accuracy >= readme_figure(), f"the example ends at {accuracy:.3f}"


def test_train_script_is_what_the_readme_runs():
    readme = (ROOT / "README.md").read_text()
    assert "bash examples/shapes/train.sh" in readme
    script = (ROOT / "examples/shapes/train.sh").read_text()
    assert "protocaffe make_shapes --out examples/shapes/data" in script
    assert "protocaffe train --solver examples/shapes/solver.prototxt" in script
    assert subprocess.run(["bash", "-n", str(ROOT / "examples/shapes/train.sh")]).returncode == 0
