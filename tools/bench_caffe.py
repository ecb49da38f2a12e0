"""Benchmark: ``protocaffe time`` against a real ``caffe time`` on the CaffeNet nets, alternately.

Each round runs, one after the other, ``caffe time`` (the binary given with ``--caffe``),
``protocaffe time`` in fp32 and ``protocaffe time --precision bf16`` on

- the deploy net (``models/bvlc_reference_caffenet/deploy.prototxt``, batch 10): a net
  without a loss, where Caffe computes each layer's weight gradients and no bottom's;
- the same net with a loss (the Input replaced by DummyData with labels, Softmax by
  SoftmaxWithLoss), where Caffe also computes every bottom's gradient but the data's.

and prints each one's Average Forward-Backward (minimum and median over the rounds) and
its ratio to Caffe's. Both tools do the same work on both nets (``protocaffe time`` takes
Caffe's backward decisions); the weights are the deploy files' (no fillers: zeros), the
same for both.

    python tools/bench_caffe.py --caffe /path/to/caffe [--iterations 5] [--rounds 3]

BENCHMARKS.md says how a Caffe 1.0 binary was obtained on this machine.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "models/bvlc_reference_caffenet/deploy.prototxt"
INPUT = re.compile(r'layer \{\s*name: "data"\s*type: "Input".*?\n\}\n', re.S)
SOFTMAX = re.compile(r'layer \{\s*name: "prob"\s*type: "Softmax".*?\n\}\n?', re.S)
DUMMY = '''layer {
  name: "data"
  type: "DummyData"
  top: "data"
  top: "label"
  dummy_data_param { shape { dim: 10 dim: 3 dim: 227 dim: 227 } shape { dim: 10 } }
}
'''
LOSS = '''layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "fc8"
  bottom: "label"
  top: "loss"
}
'''


def with_loss(text):
    """The deploy net's text with DummyData (data and label) and SoftmaxWithLoss."""
    text, n_input = INPUT.subn(DUMMY, text, count=1)
    text, n_softmax = SOFTMAX.subn(LOSS, text, count=1)
    if not (n_input and n_softmax):
        raise SystemExit(f"{DEPLOY}: expected an Input layer 'data' and a Softmax layer 'prob'")
    return text


def forward_backward_ms(command):
    """Run a ``time`` command; its Average Forward-Backward in ms."""
    result = subprocess.run(command, capture_output=True, text=True)
    found = re.findall(r"Average Forward-Backward: ([\d.e+-]+) ms", result.stderr + result.stdout)
    if result.returncode or not found:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return float(found[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caffe", required=True, help="the caffe binary")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench_caffe_"))
    loss_net = folder / "caffenet_loss.prototxt"
    loss_net.write_text(with_loss(DEPLOY.read_text()))
    nets = {"deploy": str(DEPLOY), "with loss": str(loss_net)}
    tools = {
        "caffe": lambda model: [args.caffe, "time", "--model", model, "--iterations", str(args.iterations)],
        "protocaffe fp32": lambda model: [sys.executable, "-m", "protocaffe", "time", "--model", model,
                                          "--iterations", str(args.iterations), "--precision", "fp32"],
        "protocaffe bf16": lambda model: [sys.executable, "-m", "protocaffe", "time", "--model", model,
                                          "--iterations", str(args.iterations), "--precision", "bf16"],
    }
    times = {(net, tool): [] for net in nets for tool in tools}
    for r in range(args.rounds):
        for net, model in nets.items():
            for tool, command in tools.items():
                ms = forward_backward_ms(command(model))
                times[net, tool].append(ms)
                load = os.getloadavg()[0]
                print(f"round {r + 1}  {net:9}  {tool:16} {ms:9.1f} ms  (load {load:.1f})", flush=True)
    print(f"\nAverage Forward-Backward, CaffeNet batch 10, {args.iterations} iterations, "
          f"{args.rounds} alternating rounds")
    print(f"{'net':10} {'tool':16} {'min ms':>9} {'median':>9} {'x caffe (min)':>14}")
    for net in nets:
        base = min(times[net, "caffe"])
        for tool in tools:
            t = times[net, tool]
            print(f"{net:10} {tool:16} {min(t):9.1f} {statistics.median(t):9.1f} {min(t) / base:14.3f}")


if __name__ == "__main__":
    main()
