"""Benchmark: the CaffeNet deploy net per precision, eager and compiled, against the machine's ceiling.

Prints the matrix-multiply ceiling measured now (fp32 and bf16 GFLOP/s), then for
each device, batch, precision, layout and eager/compiled: forward+backward ms per
batch, images/s, achieved GFLOP/s (convolutions and matrix products; no gradient for
the data) and its share of the ceiling; beside it the same network written by hand in
PyTorch. The backward runs from ``prob`` through every layer, as training does
(``protocaffe time`` on the deploy net does Caffe's work instead: weight gradients only,
a deploy net having no loss). Configurations are measured in turns, ``--rounds`` times
each, and the best round is kept (the machine may be shared).

``--against DIR`` also runs ``protocaffe time`` alternately from the checkout in DIR
(e.g. the code before this change) and from this one, in fp32 and bf16, and prints
each one's Average Forward-Backward (minimum and median over the rounds) and the ratios.

    python tools/bench_net.py [--iterations 5] [--rounds 3] [--batches 10] [--devices cpu,cuda]
        [--precisions fp32,bf16] [--compile] [--against /path/to/old/checkout]
"""
import argparse
import copy
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from protocaffe import TEST
from protocaffe.commands.time import forward_layers, step_flops
from protocaffe.net import build_net, read_net_param
from protocaffe.speed import Speed, matmul_ceiling

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "models/bvlc_reference_caffenet/deploy.prototxt"


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
        return F.softmax(self.fc8(x).float(), dim=1)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, iterations):
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000 / iterations


def caffenet_flops(device, batch):
    """FLOPs of one forward+backward of the deploy net at ``batch``, counted layer by layer, with
    a gradient for every bottom but the data (what the backward from ``prob`` below computes)."""
    net = build_net(str(DEPLOY), TEST, seed=1).to(device)
    net.layers["data"].shapes = [(batch,) + tuple(net.layers["data"].shapes[0][1:])]
    flops = {}
    needed = {s.key: tuple(b != "data" for b in s.bottoms) for s in net.plan}
    forward_layers(net, device, {s.key: 0.0 for s in net.plan}, needed, Speed(), flops)
    return step_flops(net, flops, needed)


def configurations(device, batch, args):
    """(label, precision, forward+backward function) for every setting asked for."""
    x = torch.randn(batch, 3, 227, 227, device=device)
    param = read_net_param(str(DEPLOY))
    param.force_backward = True  # a deploy net has no loss: Caffe's rule would skip every backward
    base = build_net(param, TEST, seed=1).to(device)
    base.keep_all_blobs = False  # as the solver and `protocaffe test` run it
    out = []
    for precision in args.precisions.split(","):
        for channels_last in (False, True):
            for compiled in (False, True) if args.compile else (False,):
                speed = Speed(precision, channels_last=channels_last, compile=compiled)
                net = speed.prepare(copy.deepcopy(base))

                def step(net=net, speed=speed):
                    with speed.autocast(device):
                        prob = net(data=x)["prob"]
                    prob.float().sum().backward()
                label = f"protocaffe {'NHWC' if channels_last else 'NCHW'}{' compiled' if compiled else ''}"
                out.append((label, precision, step))
        hand = HandCaffeNet().to(device)
        speed = Speed(precision)

        def hand_step(hand=hand, speed=speed):
            with speed.autocast(device):
                prob = hand(x)
            prob.sum().backward()
        out.append(("hand-written NCHW", precision, hand_step))
    return out


def bench(device, batch, args, ceilings):
    flop = caffenet_flops(device, batch)
    configs = configurations(device, batch, args)
    for _, _, step in configs:
        step()  # warm-up (and compilation)
    best = [float("inf")] * len(configs)
    for _ in range(args.rounds):  # in turns, so that load drifts hit every setting alike
        for i, (_, _, step) in enumerate(configs):
            best[i] = min(best[i], time_ms(step, device, args.iterations))
    for (label, precision, _), ms in zip(configs, best):
        gflops = flop / ms / 1e6
        print(f"{device.type:5} {batch:5d} {precision:5} {label:28} {ms:9.1f} {batch * 1000 / ms:9.1f} "
              f"{gflops:8.1f} {100 * gflops / ceilings[precision]:6.1f}%")


def against(old, args):
    """Alternate `protocaffe time` from ``old`` and from this checkout; print min and median."""
    runs = [("before", old, "fp32"), ("this", ROOT, "fp32"), ("this", ROOT, "bf16")]
    found = {r: [] for r in runs}
    for _ in range(args.rounds):
        for run in runs:
            cmd = [sys.executable, "-m", "protocaffe.cli", "time", "--model", str(DEPLOY),
                   "--iterations", str(args.iterations)]
            if run[0] == "this":
                cmd += ["--precision", run[2]]
            env = dict(os.environ, PYTHONPATH=str(run[1]))
            log = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
            found[run].append(float(re.search(r"Average Forward-Backward: ([\d.]+) ms", log).group(1)))
    print(f"\n`protocaffe time` on {DEPLOY.name}, batch 10, {args.rounds} alternating rounds of "
          f"{args.iterations} iterations (ms per forward-backward)")
    base = min(found[runs[0]])
    for run, values in found.items():
        print(f"{run[0]:7} {run[2]:5} min {min(values):8.1f}  median {statistics.median(values):8.1f}  "
              f"min/before-min {min(values) / base:5.3f}  all {' '.join(f'{v:.1f}' for v in values)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="10")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--compile", action="store_true", help="also time the compiled net")
    parser.add_argument("--against", default="", help="a checkout to compare `protocaffe time` with")
    args = parser.parse_args()
    devices = [torch.device(d) for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    for device in devices:
        ceilings = {p: matmul_ceiling(device, Speed(p).resolve(device).dtype, seconds=2.0)
                    for p in args.precisions.split(",")}
        print(f"{device.type} matrix-multiply ceiling: "
              + ", ".join(f"{p} {c:.1f} GFLOP/s" for p, c in ceilings.items()))
        print(f"{'dev':5} {'batch':>5} {'prec':5} {'net':28} {'fb ms':>9} {'img/s':>9} {'GFLOP/s':>8} {'ceil':>7}")
        for batch in (int(b) for b in args.batches.split(",")):
            bench(device, batch, args, ceilings)
    if args.against:
        against(args.against, args)


if __name__ == "__main__":
    main()
