"""The 2012 experiment in miniature: AlexNet's order against CaffeNet's, several seeds each.

    python examples/shapes/compare.py [--seeds 3] [--iters 1000] [--gpu 0] [--out DIR]

Trains ``train_val_alexnet.prototxt`` (LRN, then pool) and ``train_val.prototxt``
(pool, then LRN) on the built-in shapes dataset with the example's solver recipe
(SGD, momentum 0.9, weight decay 0.0005, lr divided by 10 at the same fractions of
the run), one ``protocaffe train`` per net and seed, then writes to DIR:

- ``compare.png``: test accuracy and training loss against iterations, the mean over
  seeds as a line and the range (min to max) as a band, one colour per net;
- ``compare.md``: final test accuracy (mean and standard deviation over seeds),
  ms per training iteration and the number of learned parameters per net;
- ``logs/<net>_seed<k>.log``: each run's full Caffe-format log.

Progress (each display and test line) is printed as the runs go.
"""
import argparse
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NETS = {"AlexNet (LRN, then pool)": HERE / "train_val_alexnet.prototxt",
        "CaffeNet (pool, then LRN)": HERE / "train_val.prototxt"}
SOLVER = HERE / "solver.prototxt"

TRAIN_LINE = re.compile(r"Iteration (\d+) \(([\d.eE+-]+) iter/s, .*\), loss = ([\d.eE+-]+)")
TEST_START = re.compile(r"Iteration (\d+), Testing net \(#0\)")
TEST_ACCURACY = re.compile(r"Test net output #\d+: accuracy = ([\d.eE+-]+)")


def solver_text(net, seed, iters, test_iter):
    """The example's solver recipe for ``iters`` iterations: lr steps at the same fractions."""
    from protocaffe.solver import read_solver_param
    p = read_solver_param(SOLVER)
    steps = [round(v * iters / p.max_iter) for v in p.stepvalue]
    p.net, p.random_seed, p.max_iter = str(net), seed, iters
    del p.stepvalue[:]
    p.stepvalue.extend(s for s in steps if 0 < s < iters)
    p.test_interval = max(iters // 10, 1)
    p.display = max(iters // 50, 1)
    p.test_iter[0] = test_iter
    p.snapshot, p.snapshot_after_train = 0, False
    return str(p)


def net_text(path, data):
    """The net with its data paths pointing at ``data`` (the example's folder by default)."""
    return path.read_text().replace("examples/shapes/data", str(data))


def train(label, net, seed, args, folder):
    """One ``protocaffe train``; returns (train [(iter, loss, iter/s)], test [(iter, accuracy)])."""
    name = re.sub(r"\W+", "_", label.split()[0].lower())
    net_file = folder / f"{name}.prototxt"
    net_file.write_text(net_text(net, args.data))
    solver_file = folder / f"{name}_seed{seed}_solver.prototxt"
    solver_file.write_text(solver_text(net_file, seed, args.iters, args.test_iter))
    command = [sys.executable, "-m", "protocaffe.cli", "train", "--solver", str(solver_file)]
    if args.gpu:
        command += ["--gpu", args.gpu]
    log_path = args.out / "logs" / f"{name}_seed{seed}.log"
    train_rows, test_rows, testing = [], [], None
    with open(log_path, "w") as log, subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                                                       cwd=ROOT) as child:
        for line in child.stderr:
            log.write(line)
            if m := TRAIN_LINE.search(line):
                train_rows.append((int(m[1]), float(m[3]), float(m[2])))
                print(f"  {label}, seed {seed}: iteration {m[1]}/{args.iters}, loss {float(m[3]):.4f}",
                      flush=True)
            elif m := TEST_START.search(line):
                testing = int(m[1])
            elif (m := TEST_ACCURACY.search(line)) and testing is not None:
                test_rows.append((testing, float(m[1])))
                print(f"  {label}, seed {seed}: iteration {testing}, test accuracy {float(m[1]):.4f}",
                      flush=True)
                testing = None
    if child.returncode != 0:
        raise SystemExit(f"compare: training {label} with seed {seed} failed; see {log_path}")
    return train_rows, test_rows


def parameter_count(net, data):
    """Learned parameters of the TRAIN net (weights and biases)."""
    from protocaffe.fileio import parse_text
    from protocaffe.net import build_net
    from protocaffe.proto import caffe_pb2
    from protocaffe.upgrade import upgrade_net
    param = upgrade_net(parse_text(net_text(net, data), caffe_pb2.NetParameter), str(net))
    built = build_net(param, caffe_pb2.TRAIN)
    return sum(lp.tensor.numel() for lp in built.learnable)


def curves(runs, column):
    """(iterations, mean, min, max) over seeds of one column of the runs' rows."""
    iters = np.array([row[0] for row in runs[0]])
    values = np.array([[row[column] for row in rows][:len(iters)] for rows in runs])
    return iters, values.mean(0), values.min(0), values.max(0)


def plot(results, path, iters):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=90)
    for (label, res), colour in zip(results.items(), ["tab:red", "tab:blue"]):
        for ax, runs, column in ((acc_ax, res["test"], 1), (loss_ax, res["train"], 1)):
            x, mean, low, high = curves(runs, column)
            ax.plot(x, mean, color=colour, label=label)
            ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
    seeds = len(next(iter(results.values()))["test"])
    acc_ax.set(title=f"Test accuracy (mean, min-max over {seeds} seeds)", xlabel="iteration",
               ylabel="accuracy", xlim=(0, iters))
    loss_ax.set(title="Training loss (smoothed as displayed)", xlabel="iteration", ylabel="loss",
                xlim=(0, iters))
    loss_ax.set_yscale("log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(results, args):
    lines = [f"Built-in shapes dataset, {args.iters} iterations, seeds 1-{args.seeds}, "
             f"{'GPU ' + args.gpu if args.gpu else 'CPU'}.", "",
             "| net | final test accuracy (mean ± std) | ms / iteration | parameters |",
             "| --- | --- | --- | --- |"]
    for label, res in results.items():
        final = np.array([rows[-1][1] for rows in res["test"]])
        speeds = [row[2] for rows in res["train"] for row in rows[1:] if row[2] > 0]
        ms = 1000.0 / float(np.median(speeds)) if speeds else math.nan
        lines.append(f"| {label} | {final.mean():.4f} ± {final.std():.4f} | {ms:.1f} | "
                     f"{res['params']:,} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per net (1..N) (default 3)")
    ap.add_argument("--iters", type=int, default=1000, help="training iterations (default 1000)")
    ap.add_argument("--test_iter", type=int, default=6, help="test batches of 100 (default 6: all 600)")
    ap.add_argument("--gpu", default="", help="GPU id for protocaffe train (default: the CPU)")
    ap.add_argument("--data", type=Path, default=HERE / "data", help="make_shapes folder")
    ap.add_argument("--out", type=Path, default=HERE, help="where compare.png and compare.md go")
    args = ap.parse_args(argv)
    if not (args.data / "train_lmdb").is_dir():
        print(f"Building the shapes dataset in {args.data}", flush=True)
        subprocess.run([sys.executable, "-m", "protocaffe.cli", "make_shapes", "--out", str(args.data)],
                       check=True, cwd=ROOT)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, net in NETS.items():
            res = results[label] = {"train": [], "test": [], "params": parameter_count(net, args.data)}
            for seed in range(1, args.seeds + 1):
                print(f"Training {label}, seed {seed} of {args.seeds}", flush=True)
                train_rows, test_rows = train(label, net, seed, args, Path(tmp))
                res["train"].append(train_rows)
                res["test"].append(test_rows)
    plot(results, args.out / "compare.png", args.iters)
    text = table(results, args)
    (args.out / "compare.md").write_text(text)
    print(text + f"Wrote {args.out / 'compare.png'} and {args.out / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
