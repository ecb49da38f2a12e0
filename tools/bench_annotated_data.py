"""Benchmark: batches/s of the AnnotatedData layer with SSD300's training augmentation.

The data: the shapes detection set (``make_shapes --detection``) at ``--size`` pixels,
converted by ``convert_annoset`` (JPEG). The layer: ssd_pascal.py's TRAIN transform (distort,
expand up to 4x, the seven batch samplers, WARP resize to 300x300 with one of five
interpolations, mirror, CENTER emit constraint), batch 32. Measured seeded (Caffe's random
stream: every process replays the draws of the batches before its own) and unseeded (batch k
draws from (seed, k) alone), in the training thread (0 workers) and with worker processes.

    python tools/bench_annotated_data.py [--images 400] [--size 300] [--batches 12] [--workers 0,1,all]
"""
import argparse
import logging
import os
import tempfile
import time

from protocaffe.cli import main
from protocaffe.datasets.shapes_detection import make_shapes_detection
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2

SAMPLER = """batch_sampler {{ sampler {{ min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 }}
      sample_constraint {{ {constraint} }} max_sample: 1 max_trials: 50 }}"""
NET = """layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ mirror: true mean_value: 104 mean_value: 117 mean_value: 123
    resize_param {{ prob: 1 resize_mode: WARP height: 300 width: 300
      interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST interp_mode: CUBIC interp_mode: LANCZOS4 }}
    emit_constraint {{ emit_type: CENTER }}
    distort_param {{ brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5
      contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5 saturation_lower: 0.5
      saturation_upper: 1.5 random_order_prob: 0 }}
    expand_param {{ prob: 0.5 max_expand_ratio: 4 }} }}
  data_param {{ source: "{db}" batch_size: 32 backend: LMDB }}
  annotated_data_param {{ batch_sampler {{ max_sample: 1 max_trials: 1 }}
    {samplers} }} }}"""


def make_data(folder, images, size):
    make_shapes_detection(folder, train=images, val=1, size=size, seed=0)
    db = os.path.join(folder, "train_lmdb")
    assert main(["convert_annoset", "--anno_type=detection", f"--label_map_file={folder}/labelmap.prototxt",
                 "--encoded", "--encode_type=jpg", folder + "/", f"{folder}/train.txt", db]) == 0
    constraints = [f"min_jaccard_overlap: {v}" for v in (0.1, 0.3, 0.5, 0.7, 0.9)] + ["max_jaccard_overlap: 1.0"]
    path = os.path.join(folder, "net.prototxt")
    with open(path, "w") as f:
        f.write(NET.format(db=db, samplers="\n    ".join(SAMPLER.format(constraint=c) for c in constraints)))
    return path


def measure(net_path, seeded, workers, batches):
    """(batches/s, CPU seconds of this process per batch): with 0 workers the CPU time is all the work."""
    net = build_net(net_path, caffe_pb2.TRAIN, seed=1 if seeded else None)
    layer = net.layers["data"]
    layer.workers = workers
    net(), net()  # start the workers, fill the queue
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        net()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    layer.close()
    return batches / seconds, cpu / batches


def main_bench():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--workers", default="0,1,all")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = [max(1, cores - 1) if w == "all" else int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        net = make_data(folder, args.images, args.size)
        logging.getLogger("protocaffe").setLevel(logging.WARNING)
        print(f"AnnotatedData, SSD300 training transform, batch 32, {args.size}x{args.size} JPEG records, "
              f"{cores} cores, load average {os.getloadavg()[0]:.1f}")
        for seeded in (True, False):
            for workers in counts:
                rate, cpu = measure(net, seeded, workers, args.batches)
                work = f", {cpu / 32 * 1000:5.1f} ms of CPU per image" if workers == 0 else ""
                print(f"  {'seeded (Caffe draws)' if seeded else 'unseeded':22s} workers {workers}: "
                      f"{rate:6.2f} batches/s ({rate * 32:6.1f} images/s){work}")


if __name__ == "__main__":
    main_bench()
