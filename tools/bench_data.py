"""Benchmark: images/s of the Data layer, 256x256 raw Datum records into 227x227 crops, batch 256.

TRAIN phase with random crops, mirroring, a full-size mean file and a scale,
as AlexNet's training net reads ImageNet. The Data layer runs in the training
thread (0 workers) and with 1, 2 and all cores' worker processes, on the CPU
and, where there is one, on a CUDA device (uint8 windows uploaded through
pinned memory, normalized there). The floor is a plain Python loop over the
same records doing the same work image by image. Makes its own temporary LMDB
of random images.

    python tools/bench_data.py [--images 2000] [--batches 12] [--workers 0,1,2,all] [--devices cpu,cuda]
"""
import argparse
import os
import tempfile
import time

import lmdb
import numpy as np
import torch

from protocaffe.fileio import array_to_datum, parse_text, write_mean
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2

SIZE, CROP, BATCH, SCALE = 256, 227, 256, 0.017


def make_db(folder, count):
    rng = np.random.default_rng(0)
    env = lmdb.open(os.path.join(folder, "db"), map_size=1 << 36)
    with env.begin(write=True) as txn:
        for i in range(count):
            img = rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
            txn.put(f"{i:08d}_{i}.jpg".encode(), array_to_datum(img, i % 1000).SerializeToString())
    env.close()
    mean = rng.uniform(90, 130, (3, SIZE, SIZE)).astype(np.float32)
    write_mean(mean, os.path.join(folder, "mean.binaryproto"))
    return mean


def plain_loop(folder, mean, batches):
    """One image at a time in Python: parse, crop, mirror, subtract the mean, scale."""
    rng = np.random.default_rng(0)
    env = lmdb.open(os.path.join(folder, "db"), readonly=True, lock=False)
    start = time.perf_counter()
    with env.begin() as txn:
        cursor = txn.cursor()
        cursor.first()
        for _ in range(batches):
            out = np.empty((BATCH, 3, CROP, CROP), np.float32)
            for i in range(BATCH):
                datum = caffe_pb2.Datum.FromString(cursor.value())
                if not cursor.next():
                    cursor.first()
                img = np.frombuffer(datum.data, np.uint8).reshape(3, SIZE, SIZE)
                y, x = rng.integers(0, SIZE - CROP + 1, 2)
                patch = (img[:, y:y + CROP, x:x + CROP] - mean[:, y:y + CROP, x:x + CROP]) * np.float32(SCALE)
                out[i] = patch[:, :, ::-1] if rng.integers(2) else patch
    env.close()
    return batches * BATCH / (time.perf_counter() - start)


def data_layer(folder, batches, device, workers):
    text = f'''layer {{ name: "data" type: "Data" top: "data" top: "label"
      transform_param {{ crop_size: {CROP} mirror: true scale: {SCALE} mean_file: "{folder}/mean.binaryproto" }}
      data_param {{ source: "{folder}/db" batch_size: {BATCH} backend: LMDB prefetch: 4 }} }}'''
    net = build_net(parse_text(text, caffe_pb2.NetParameter), caffe_pb2.TRAIN, seed=1).to(device)
    layer = net.layer_by_name()["data"]
    layer.workers = workers
    for _ in range(6):  # start the workers and drain what they made before the clock starts
        net()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        out = net()["data"]
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape == (BATCH, 3, CROP, CROP) and out.device.type == device.type
    layer.close()
    return batches * BATCH / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="records in the temporary LMDB")
    parser.add_argument("--batches", type=int, default=12, help="batches timed per setting")
    parser.add_argument("--workers", default="0,1,2,all", help="worker processes to try; all = one per core")
    parser.add_argument("--devices", default="cpu,cuda")
    args = parser.parse_args()
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        mean = make_db(folder, args.images)
        print(f"{args.images} records of 3x{SIZE}x{SIZE} raw Datum -> {CROP}x{CROP} crops, batch {BATCH}, "
              f"TRAIN (random crop, mirror, mean file, scale); {cores} cores")
        floor = plain_loop(folder, mean, max(2, args.batches // 2))
        print(f"  {'plain Python loop (floor)':53s} {floor:8,.0f} images/s")
        for device in args.devices.split(","):
            if device == "cuda" and not torch.cuda.is_available():
                print("  cuda: no device here")
                continue
            for setting in args.workers.split(","):
                workers = cores if setting == "all" else int(setting)
                label = ("in the training thread" if workers == 0 else
                         f"{workers} worker process(es){' (all cores)' if setting == 'all' else ''}")
                rate = data_layer(folder, args.batches, torch.device(device), workers)
                print(f"  Data layer, {device:4s} {label:36s} {rate:8,.0f} images/s ({rate / floor:.1f}x the floor)")


if __name__ == "__main__":
    main()
