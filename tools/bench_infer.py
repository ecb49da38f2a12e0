"""Benchmark: inference against OpenCV 4's dnn module and onnxruntime, on the zoo's deploy nets.

    python tools/bench_infer.py [--nets caffenet,googlenet,...] [--batches 1,10] [--rounds 7]
        [--threads 2] [--no-onnx] [--seed 0]

For each net (models/bvlc_reference_caffenet and models/zoo, written by tools/zoo.py) and
batch size: random weights are drawn (He-normal convolutions and inner products, BatchNorm
statistics and Scale factors around 1, the classifier rescaled so the logits have a
standard deviation of 2 and the probabilities are not one-hot) and saved as a .caffemodel;
then, in one process, with the same number of threads each:

- protocaffe: pycaffe's ``Net(prototxt, caffemodel, TEST)``, input written into
  ``net.blobs['data'].data``, ``net.forward()`` (the deployment fast path);
- OpenCV: ``cv2.dnn.readNetFromCaffe``, ``setInput``, ``forward``;
- onnxruntime: the same net exported by protocaffe.export_onnx, all graph optimizations.

Each net runs in a fresh process of its own (``--in-process``: all in this one). Each round
runs every engine once in turn (the first engine rotating from round to round, each run
after ``--gap-ms`` of idling, so that no engine is timed against the threads another leaves
spinning); the best round is each engine's figure (the median beside it when ``--medians``).
``first ms`` is protocaffe's first forward, which measures the layout, the convolutions'
algorithms and the engine once per machine and net (cached, protocaffe.deploy.settings) and
packs the weights; ``protocaffe engine`` is what it chose: the torch plan (with its layout)
or onnxruntime on the net's ONNX form (``PROTOCAFFE_ENGINES=torch``: the torch plan alone).
The outputs are compared on the probabilities: the largest absolute difference divided by
the largest probability, against OpenCV's. The ratio is protocaffe's time over OpenCV's; the
geometric mean of the ratios is given per batch size.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import protocaffe as caffe  # noqa: E402
from protocaffe.deploy.machine import cpu_name  # noqa: E402
from protocaffe.net import build_net, read_net_param  # noqa: E402

NETS = {"caffenet": ROOT / "models/bvlc_reference_caffenet/deploy.prototxt"}
NETS.update((n, ROOT / f"models/zoo/{n}/deploy.prototxt") for n in
            ["googlenet", "resnet50", "mobilenet_v1", "mobilenet_v2", "squeezenet_v1.0", "squeezenet_v1.1",
             "vgg16"])
TOLERANCE = 1e-4
LOGIT_STD = 2.0


def prototxt_for_batch(path, batch, out):
    """The deploy prototxt with its Input's first dimension set to ``batch``."""
    param = read_net_param(path)
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    out.write_text(str(param))
    return out


def random_weights(net, seed):
    """He-normal weights, small biases, BatchNorm statistics (with a scale factor) and Scale factors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layer_by_name().values():
            if layer.type in ("Convolution", "InnerProduct"):
                w = layer.weight
                w.copy_(torch.randn(w.shape, generator=gen) * math.sqrt(2.0 / w[0].numel()))
                if layer.bias is not None:
                    layer.bias.copy_(torch.rand(layer.bias.shape, generator=gen) * 0.2 - 0.1)
            elif layer.type == "BatchNorm":
                factor = float(torch.rand((), generator=gen)) * 1.5 + 0.5
                layer.mean.copy_(torch.randn(layer.mean.shape, generator=gen) * 0.1 * factor)
                layer.variance.copy_((torch.rand(layer.variance.shape, generator=gen) + 0.5) * factor)
                layer.scale_factor.fill_(factor)
            elif layer.type == "Scale":
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) + 0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.1)


def calibrate(net, x):
    """Scale the last weighted layer so the softmax's input has standard deviation LOGIT_STD
    (every layer after it is positively homogeneous: ReLU, pooling, dropout)."""
    softmax = next(s for s in reversed(net.plan) if net.layers[s.key].type == "Softmax")
    with torch.no_grad():
        logits = net.run({"data": x})[0][softmax.bottoms[0]]
        last = [net.layers[s.key] for s in net.plan if net.layers[s.key].blob_names][-1]
        factor = LOGIT_STD / float(logits.std())
        last.weight.mul_(factor)
        if last.bias is not None:
            last.bias.mul_(factor)


def make_files(name, batches, seed, folder):
    """{batch: prototxt}, the .caffemodel, and {batch: input} for net ``name``."""
    protos = {b: prototxt_for_batch(NETS[name], b, folder / f"{name}_b{b}.prototxt") for b in batches}
    net = build_net(str(protos[max(batches)]), caffe.TEST)
    random_weights(net, seed)
    rng = np.random.default_rng(seed)
    inputs = {b: rng.standard_normal((b,) + net.blob_shapes["data"][1:]).astype(np.float32) for b in batches}
    calibrate(net, torch.from_numpy(inputs[max(batches)]))
    weights = folder / f"{name}.caffemodel"
    net.save(str(weights))
    return protos, weights, inputs


class Protocaffe:
    label = "protocaffe"

    def __init__(self, proto, weights, x):
        self.net = caffe.Net(str(proto), str(weights), caffe.TEST)
        self.x = x
        start = time.perf_counter()
        self()
        self.first_ms = (time.perf_counter() - start) * 1000
        chosen = self.net.module.deployed(set(self.net.outputs)).settings
        self.engine = chosen.engine if chosen.engine != "torch" else \
            f"torch {'NHWC' if chosen.channels_last else 'NCHW'}"

    def __call__(self):
        self.net.blobs["data"].data[...] = self.x
        return self.net.forward()["prob"].reshape(len(self.x), -1)


class OpenCV:
    label = "OpenCV"

    def __init__(self, proto, weights, x):
        self.net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
        self.x = x

    def __call__(self):
        self.net.setInput(self.x)
        return self.net.forward().reshape(len(self.x), -1)


class OnnxRuntime:
    label = "onnxruntime"

    def __init__(self, proto, weights, x, threads, folder):
        import onnxruntime
        path = folder / f"{proto.stem}.onnx"
        caffe.export_onnx(build_net(str(proto), caffe.TEST, weights=str(weights)), str(path))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.x = x

    def __call__(self):
        return self.session.run(["prob"], {"data": self.x})[0].reshape(len(self.x), -1)


def relative_diff(a, reference):
    return float(np.abs(a - reference).max() / np.abs(reference).max())


def bench(engines, rounds, clock=time.perf_counter, gap=0.05):
    """{label: [ms per round]}, each round running every engine once, in turn, the first engine
    of a round rotating. Before each timed run the process idles ``gap`` seconds: each engine's
    worker threads spin for a while after its run (OpenMP's, OpenCV's pool, onnxruntime's
    spin-waits), and without the pause the next engine is timed against them on a small machine
    (measured here: on 2 cores a forward after onnxruntime's took 50 ms instead of 11)."""
    times = {e.label: [] for e in engines}
    for e in engines:
        e()
    for r in range(rounds):
        turn = engines[r % len(engines):] + engines[:r % len(engines)]
        for e in turn:
            time.sleep(gap)
            start = clock()
            e()
            times[e.label].append((clock() - start) * 1000)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--batches", default="1,10")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-onnx", action="store_true", help="leave onnxruntime out")
    p.add_argument("--medians", action="store_true", help="print each engine's median beside its best")
    p.add_argument("--gap-ms", type=float, default=50.0,
                   help="idle time before each timed run, so no engine is timed against another's spinning threads")
    p.add_argument("--cpu-time", action="store_true",
                   help="time in CPU seconds of this process, not wall time: with --threads 1, less "
                        "disturbed by other work on a shared machine")
    p.add_argument("--in-process", action="store_true",
                   help="run every net in this process (by default each net runs in a fresh process of its "
                        "own, so that the memory an earlier net left to the C library does not slow the "
                        "next net's engines: measured here, SqueezeNet 1.1 ran 1.5x slower in both after CaffeNet)")
    p.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    caffe.set_mode_cpu()
    batches = [int(b) for b in args.batches.split(",")]
    if args.rows_only:
        run_nets(args, batches)
        return 0
    load_before = os.getloadavg()
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; CPU: {cpu_name()}; {args.threads} threads each; "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}"
          + ("" if args.no_onnx else f", onnxruntime {__import__('onnxruntime').__version__}"))
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in load_before)}; best of {args.rounds} "
          f"alternating rounds, {args.gap_ms:g} ms idle before each run{', CPU time' if args.cpu_time else ''}")
    header = ["net", "batch", "protocaffe ms", "OpenCV ms", "onnxruntime ms", "ratio", "ort ratio",
              "max diff", "ort max diff", "first ms", "protocaffe engine"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    ratios = {b: [] for b in batches}
    failed = []
    for name in args.nets.split(","):
        if args.in_process:
            rows = run_nets(args, batches, [name])
        else:
            argv = ["--nets", name, "--batches", args.batches, "--rounds", str(args.rounds), "--threads",
                    str(args.threads), "--seed", str(args.seed), "--gap-ms", str(args.gap_ms), "--rows-only"]
            argv += [flag for flag, on in (("--no-onnx", args.no_onnx), ("--medians", args.medians),
                                           ("--cpu-time", args.cpu_time)) if on]
            child = subprocess.run([sys.executable, __file__, *argv],
                                   stdout=subprocess.PIPE, text=True, check=False)
            print("".join(line + "\n" for line in child.stdout.splitlines() if not line.startswith(ROW)),
                  end="", flush=True)
            rows = [json.loads(line[len(ROW):]) for line in child.stdout.splitlines() if line.startswith(ROW)]
            if child.returncode not in (0, 1) or len(rows) != len(batches):
                failed.append(f"{name} (exit {child.returncode})")
        for row in rows:
            ratios[row["batch"]].append(row["ratio"])
            if row["diff"] > TOLERANCE:
                failed.append(f"{name} b{row['batch']}")
    for b in batches:
        if ratios[b]:
            print(f"# batch {b}: geometric mean of protocaffe / OpenCV = "
                  f"{math.exp(sum(map(math.log, ratios[b])) / len(ratios[b])):.3f}, highest {max(ratios[b]):.2f}")
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if failed:
        print(f"# outputs differ by more than {TOLERANCE} (relative to the largest probability), or the "
              "run failed: " + ", ".join(failed))
        return 1
    return 0


ROW = "#row "


def run_nets(args, batches, names=None):
    """Measure ``names`` (else ``args.nets``) at each batch size: prints each table row and, after
    it, the row's figures as ``#row {json}``; returns those figures."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in names or args.nets.split(","):
            protos, weights, inputs = make_files(name, batches, args.seed, folder)
            for b in batches:
                engines = [Protocaffe(protos[b], weights, inputs[b]), OpenCV(protos[b], weights, inputs[b])]
                if not args.no_onnx:
                    engines.append(OnnxRuntime(protos[b], weights, inputs[b], args.threads, folder))
                outs = {e.label: e() for e in engines}
                times = bench(engines, args.rounds, time.process_time if args.cpu_time else time.perf_counter,
                              args.gap_ms / 1000)
                best = {k: min(v) for k, v in times.items()}
                diff = {k: relative_diff(v, outs["OpenCV"]) for k, v in outs.items()}
                ratio = best["protocaffe"] / best["OpenCV"]

                def ms(label):
                    if label not in best:
                        return "-"
                    med = f" ({statistics.median(times[label]):.1f})" if args.medians else ""
                    return f"{best[label]:.1f}{med}"
                ort = "-" if "onnxruntime" not in best else f"{best['onnxruntime'] / best['OpenCV']:.2f}"
                print(f"| {name} | {b} | {ms('protocaffe')} | {ms('OpenCV')} | {ms('onnxruntime')} | "
                      f"**{ratio:.2f}** | {ort} | "
                      f"{diff['protocaffe']:.1e} | {diff.get('onnxruntime', float('nan')):.1e} | "
                      f"{engines[0].first_ms:.0f} | {engines[0].engine} |", flush=True)
                rows.append({"batch": b, "ratio": ratio, "diff": max(diff.values())})
                if args.rows_only:
                    print(ROW + json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
