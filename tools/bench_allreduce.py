"""Benchmark and model of data-parallel scaling for CaffeNet: compute per iteration, all-reduce, efficiency.

Measures here (1) CaffeNet's forward+backward time per iteration at small batches
on the CPU, extrapolated linearly to the prototxt's batch 256 (t = a + b * batch,
fitted on the batches measured), and (2) the time to all-reduce CaffeNet's
parameters (float32) with gloo between local processes. Then projects the
efficiency of 8 GPUs with the ring all-reduce cost 2 (N - 1) / N * bytes / bandwidth,
for an assumed per-iteration GPU compute time (``--gpu-ms``), with the all-reduce
either after backward (no overlap) or overlapped with backward as DDP does it
(backward taken as 2/3 of the compute; only what does not fit behind it shows).

    python tools/bench_allreduce.py [--batches 8,16] [--iterations 3] [--ranks 2] [--gpu-ms 20]
"""
import argparse
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from protocaffe import TEST
from protocaffe.net import build_net

DEPLOY = Path(__file__).resolve().parent.parent / "models/bvlc_reference_caffenet/deploy.prototxt"
LINKS = {"NVLink (300 GB/s per GPU)": 300e9, "100 Gb/s Ethernet (12.5 GB/s)": 12.5e9}


def compute_ms(batch, iterations):
    """Median ms of CaffeNet forward + backward at ``batch`` (227 x 227 inputs) on the CPU."""
    net = build_net(str(DEPLOY), TEST, seed=1)
    net.keep_all_blobs = False
    x = torch.randn(batch, 3, 227, 227)
    times = []
    for _ in range(iterations + 1):
        start = time.perf_counter()
        net(data=x)["prob"].log().sum().backward()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def parameter_count():
    return sum(lp.tensor.numel() for lp in build_net(str(DEPLOY), TEST, seed=1).learnable)


def _allreduce_rank(rank, world, port, count, repeats, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grads = torch.ones(count)
    dist.all_reduce(grads)  # warm-up: connections and buffers
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(grads)
        times.append((time.perf_counter() - start) * 1000)
    if rank == 0:
        out.put(statistics.median(times))
    dist.destroy_process_group()


def allreduce_ms(count, world, repeats):
    """Median ms to all-reduce ``count`` float32 values among ``world`` local gloo processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    mp.start_processes(_allreduce_rank, args=(world, port, count, repeats, out), nprocs=world,
                       start_method="spawn")
    return out.get()


def ring_ms(nbytes, ranks, bandwidth):
    """Ring all-reduce: each rank sends and receives 2 (N - 1) / N of the buffer."""
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth * 1000


def efficiency(compute, comm, overlap):
    """Per-rank throughput with N ranks over one rank's: compute / (compute + exposed all-reduce)."""
    exposed = max(0.0, comm - 2 / 3 * compute) if overlap else comm
    return compute / (compute + exposed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8,16", help="CPU batches to time, extrapolated to 256")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2, help="local gloo processes for the all-reduce")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-ms", type=float, default=20.0,
                        help="assumed GPU compute per iteration at batch 256 (default: an H100 in bf16)")
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()

    count = parameter_count()
    nbytes = 4 * count
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores")
    print(f"CaffeNet: {count:,} parameters, {nbytes / 1e6:.1f} MB of float32 gradients per iteration")

    batches = [int(b) for b in args.batches.split(",")]
    measured = [(b, compute_ms(b, args.iterations)) for b in batches]
    for b, ms in measured:
        print(f"compute (CPU), batch {b:4d}: {ms:9.1f} ms forward+backward")
    (b0, t0), (b1, t1) = measured[0], measured[-1]
    slope = (t1 - t0) / (b1 - b0) if b1 != b0 else t0 / b0
    cpu_256 = t0 + slope * (256 - b0)
    print(f"compute (CPU), batch  256: {cpu_256:9.1f} ms (extrapolated: {slope:.1f} ms per image)")

    ar = allreduce_ms(count, args.ranks, args.repeats)
    busbw = 2 * (args.ranks - 1) / args.ranks * nbytes / (ar / 1000)
    print(f"all-reduce (gloo, {args.ranks} local processes): {ar:.1f} ms "
          f"(bus bandwidth {busbw / 1e9:.2f} GB/s)")
    print(f"here, {args.ranks} CPU ranks at batch 256: efficiency {efficiency(cpu_256, ar, False):.1%} "
          f"without overlap, {efficiency(cpu_256, ar, True):.1%} overlapped")

    print(f"\nprojection: {args.gpus} GPUs, assumed compute {args.gpu_ms:g} ms per iteration at batch 256")
    print(f"{'link':32} {'all-reduce ms':>13} {'no overlap':>11} {'overlapped':>11}")
    for name, bandwidth in LINKS.items():
        comm = ring_ms(nbytes, args.gpus, bandwidth)
        print(f"{name:32} {comm:13.2f} {efficiency(args.gpu_ms, comm, False):11.1%} "
              f"{efficiency(args.gpu_ms, comm, True):11.1%}")


if __name__ == "__main__":
    main()
