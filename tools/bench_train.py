"""Benchmark: the training loop and data path against the bare net's forward+backward.

Makes a synthetic LMDB (the shapes dataset, 64x64 raw Datums), then times, in turns:
  * train: the solver of `protocaffe train` (examples/shapes: Data layer with random
    crops, mirroring and a mean file; SoftmaxWithLoss; Caffe's SGD update; no display,
    test or snapshot inside the timed iterations), iterations per second;
  * bare: the same train net fed ready tensors of the same shapes, forward+backward only.
The overhead (train time / bare time - 1) is what the loop, the update and the data
path cost beyond the net itself; the goal is under 10%. Each is measured ``--rounds``
times; the best round counts (the machine may be shared).

    python tools/bench_train.py [--iterations 20] [--rounds 3] [--precision fp32] [--gpu N]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from protocaffe.commands.common import device_for, parse_gpu
from protocaffe.datasets.shapes import make_shapes
from protocaffe.solver import CaffeSolver, read_solver_param

ROOT = Path(__file__).resolve().parent.parent


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_solver(folder, precision, gpu):
    text = (ROOT / "examples/shapes/train_val.prototxt").read_text().replace("examples/shapes/data", str(folder / "data"))
    (folder / "net.prototxt").write_text(text)
    p = read_solver_param(ROOT / "examples/shapes/solver.prototxt")
    p.net, p.precision = str(folder / "net.prototxt"), precision
    p.display = p.test_interval = p.snapshot = 0
    p.test_initialization = p.snapshot_after_train = False
    p.max_iter = 10 ** 9
    return CaffeSolver(p, gpu=gpu)


def time_train(solver, iterations):
    _sync(solver.device)
    start = time.perf_counter()
    solver.step(iterations)
    float(solver.smoothed_loss)  # the loop's only read-back, at the end
    _sync(solver.device)
    return (time.perf_counter() - start) / iterations


def time_bare(solver, iterations):
    """The train net's forward+backward on ready tensors (the Data layer is skipped)."""
    net, speed, device = solver.net, solver.speed, solver.device
    shape = net.blob_shapes["data"]
    data = torch.randn(shape, device=device)
    label = torch.randint(0, 6, shape[:1], device=device).float()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        with speed.autocast(device):
            loss = net.loss(net(data=data, label=label))
        loss.backward()
    _sync(device)
    return (time.perf_counter() - start) / iterations


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--gpu", default="")
    args = parser.parse_args()
    gpu = parse_gpu(args.gpu)
    device_for(gpu)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_shapes(str(folder / "data"), train=args.images, val=100, size=64, seed=1)
        solver = make_solver(folder, args.precision, gpu)
        batch = solver.net.blob_shapes["data"][0]
        solver.step(3)  # warm-up: workers started, first batches made
        time_bare(solver, 2)
        train, bare = [], []
        for _ in range(args.rounds):
            train.append(time_train(solver, args.iterations))
            bare.append(time_bare(solver, args.iterations))
        t, b = min(train), min(bare)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {solver.device}, "
              f"precision {args.precision}, batch {batch}, {args.rounds} rounds of {args.iterations} iterations")
        print(f"train (protocaffe train's solver, data + loop + update): {t * 1000:8.1f} ms/iter "
              f"{batch / t:8.1f} images/s   rounds: {' '.join(f'{v * 1000:.1f}' for v in train)}")
        print(f"bare net forward+backward on ready tensors:            {b * 1000:8.1f} ms/iter "
              f"{batch / b:8.1f} images/s   rounds: {' '.join(f'{v * 1000:.1f}' for v in bare)}")
        print(f"overhead of loop, update and data path: {100 * (t / b - 1):.1f}%")
        for layer in solver.net.layers.values():
            if hasattr(layer, "close"):
                layer.close()


if __name__ == "__main__":
    main()
