"""Benchmark: the compiled CaffeNet deploy net beside the same network written by hand in PyTorch.

Prints forward and forward+backward milliseconds per batch at batch 10 and 256, on
the CPU and on CUDA where present, and the ratio compiled / hand-written. The compiled
net runs as training and testing run it, releasing blobs once no later layer reads them
(``keep_all_blobs = False``); pycaffe-style use keeps every blob for inspection.

    python tools/bench_net.py [--iterations 5] [--batches 10,256] [--devices cpu,cuda]
"""
import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from protocaffe import TEST
from protocaffe.net import build_net

DEPLOY = Path(__file__).resolve().parent.parent / "models/bvlc_reference_caffenet/deploy.prototxt"


class HandCaffeNet(nn.Module):
    """CaffeNet as a PyTorch user would write it (pool then normalize, group 2 in conv2/4/5)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.fc6 = nn.Linear(9216, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, 1000)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def forward(self, x):
        x = self.lrn(F.max_pool2d(F.relu(self.conv1(x)), 3, 2, ceil_mode=True))
        x = self.lrn(F.max_pool2d(F.relu(self.conv2(x)), 3, 2, ceil_mode=True))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2, ceil_mode=True)
        x = F.relu(self.fc6(x.flatten(1)))
        x = F.relu(self.fc7(x))
        return F.softmax(self.fc8(x), dim=1)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, iterations):
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000 / iterations


def bench(device, batch, iterations):
    compiled = build_net(str(DEPLOY), TEST, seed=1).to(device)
    compiled.keep_all_blobs = False  # as the solver and `protocaffe test` run it
    hand = HandCaffeNet().to(device)
    x = torch.randn(batch, 3, 227, 227, device=device)

    def fwd_compiled():
        with torch.no_grad():
            compiled(data=x)

    def fwd_hand():
        with torch.no_grad():
            hand(x)

    def fb_compiled():
        compiled(data=x)["prob"].sum().backward()

    def fb_hand():
        hand(x).sum().backward()

    rows = []
    for what, a, b in (("forward", fwd_compiled, fwd_hand), ("forward+backward", fb_compiled, fb_hand)):
        # interleave to share any drift in machine load fairly
        ta, tb = [], []
        for _ in range(2):
            ta.append(time_ms(a, device, iterations))
            tb.append(time_ms(b, device, iterations))
        ta, tb = min(ta), min(tb)
        rows.append((device.type, batch, what, ta, tb, ta / tb))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batches", default="10,256")
    parser.add_argument("--devices", default="cpu,cuda")
    args = parser.parse_args()
    devices = [torch.device(d) for d in args.devices.split(",")
               if d != "cuda" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    print(f"{'device':6} {'batch':>5} {'pass':17} {'protocaffe ms':>14} {'hand-written ms':>16} {'ratio':>6}")
    for device in devices:
        for batch in (int(b) for b in args.batches.split(",")):
            for row in bench(device, batch, args.iterations):
                print(f"{row[0]:6} {row[1]:5d} {row[2]:17} {row[3]:14.2f} {row[4]:16.2f} {row[5]:6.3f}")


if __name__ == "__main__":
    main()
