"""The 2012 miniature (examples/shapes/compare.py) end to end at a tiny size: both nets, both files."""
import re
import subprocess
import sys
from pathlib import Path

import cv2

from protocaffe.datasets.shapes import make_shapes

ROOT = Path(__file__).resolve().parent.parent


def test_compare_trains_both_nets_and_writes_picture_and_table(tmp_path):
    make_shapes(str(tmp_path / "data"), train=64, val=20, size=64, seed=2)
    done = subprocess.run([sys.executable, str(ROOT / "examples/shapes/compare.py"), "--seeds", "1",
                           "--iters", "4", "--test_iter", "1", "--data", str(tmp_path / "data"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "AlexNet (LRN, then pool), seed 1: iteration 4, test accuracy" in done.stdout
    picture = cv2.imread(str(tmp_path / "out/compare.png"))
    assert picture is not None and picture.shape == (360, 900, 3)
    rows = re.findall(r"^\| (\w+) .*? \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) \| ([\d,]+) \|$",
                      (tmp_path / "out/compare.md").read_text(), re.M)
    assert [r[0] for r in rows] == ["AlexNet", "CaffeNet"]
    assert all(0 <= float(r[1]) <= 1 and float(r[3]) > 0 for r in rows)
    assert rows[0][4] == rows[1][4] == "139,846"  # the twins differ in layer order only
    logs = sorted(p.name for p in (tmp_path / "out/logs").iterdir())
    assert logs == ["alexnet_seed1.log", "caffenet_seed1.log"]
