"""Benchmark: images/s of the Data layer, 256x256 raw Datum records into 227x227 crops, batch 256.

Beside it, the floor: a plain Python loop over the same records doing the same work
image by image (parse, crop, mirror, subtract the mean, scale). Makes its own
temporary LMDB of random images. Prints one line per setting.

    python tools/bench_data.py [--images 1024] [--batches 8] [--threads 1,2,all] [--devices cpu,cuda]
"""
import argparse
import os
import tempfile
import time

import lmdb
import numpy as np
import torch

from protocaffe.io import array_to_datum, parse_text, write_mean
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2


def make_db(folder, count, size=256):
    rng = np.random.default_rng(0)
    env = lmdb.open(os.path.join(folder, "db"), map_size=1 << 36)
    with env.begin(write=True) as txn:
        for i in range(count):
            img = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
            txn.put(f"{i:08d}".encode(), array_to_datum(img, i % 1000).SerializeToString())
    env.close()
    write_mean(np.full((3, size, size), 110, np.float32), os.path.join(folder, "mean.binaryproto"))


def plain_loop(folder, batches, batch=256, crop=227):
    """One image at a time in Python: the floor any real pipeline must beat."""
    mean = np.full((3, 256, 256), 110, np.float32)
    rng = np.random.default_rng(0)
    env = lmdb.open(os.path.join(folder, "db"), readonly=True, lock=False)
    start, n = time.perf_counter(), 0
    with env.begin() as txn:
        cursor = txn.cursor()
        cursor.first()
        for _ in range(batches):
            out = np.empty((batch, 3, crop, crop), np.float32)
            for i in range(batch):
                datum = caffe_pb2.Datum.FromString(cursor.value())
                if not cursor.next():
                    cursor.first()
                img = np.frombuffer(datum.data, np.uint8).reshape(3, 256, 256)
                y, x = rng.integers(0, 256 - crop + 1, 2)
                patch = (img[:, y:y + crop, x:x + crop] - mean[:, y:y + crop, x:x + crop]) * 0.5
                out[i] = patch[:, :, ::-1] if rng.integers(2) else patch
                n += 1
    return n / (time.perf_counter() - start)


def data_layer(folder, batches, device, batch=256):
    text = f'''layer {{ name: "data" type: "Data" top: "data" top: "label"
      transform_param {{ crop_size: 227 mirror: true scale: 0.5 mean_file: "{folder}/mean.binaryproto" }}
      data_param {{ source: "{folder}/db" batch_size: {batch} backend: LMDB prefetch: 4 }} }}'''
    net = build_net(parse_text(text, caffe_pb2.NetParameter), caffe_pb2.TRAIN, seed=1).to(device)
    net()  # warm-up: the reader thread starts and fills its queue
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        out = net()["data"]
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert out.shape == (batch, 3, 227, 227)
    return batches * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", default="1,2,all")
    parser.add_argument("--devices", default="cpu,cuda")
    args = parser.parse_args()
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        make_db(folder, args.images)
        floor = plain_loop(folder, max(1, args.batches // 2))
        print(f"{os.cpu_count()} cores; plain Python loop (floor): {floor:,.0f} images/s")
        for device in args.devices.split(","):
            if device == "cuda" and not torch.cuda.is_available():
                continue
            for threads in args.threads.split(","):
                n = cores if threads == "all" else int(threads)
                torch.set_num_threads(n)
                rate = data_layer(folder, args.batches, torch.device(device))
                print(f"Data layer, {device}, {n} torch thread(s): {rate:,.0f} images/s "
                      f"({rate / floor:.1f}x the plain loop)")


if __name__ == "__main__":
    main()
