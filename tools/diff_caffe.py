"""Differential check against a real Caffe: random layer configurations, Caffe's forward and ours.

Each case is one layer of a randomly drawn type and configuration (kernel, stride, pad,
dilation, group, axes, coefficients, ...) on a random input read by an HDF5Data layer.
protocaffe builds the net, fills its weights (seeded), runs it and writes the weights;
``caffe test`` runs the same prototxt with those weights and logs every output value
(``Batch 0, out = ...``, 6 significant digits). A case passes when both refuse the
configuration at setup, or both run and every value agrees to 2e-5 relative (plus a
small absolute slack for Caffe's printed digits). Failing cases are kept in ``--keep``.

    python tools/diff_caffe.py --caffe /opt/caffe/caffe [--cases 300] [--seed 0] [--types Pooling,LRN]
        [--keep /tmp/diff_caffe_failures]

tools/fetch_bvlc_caffe.sh gets a Caffe 1.0 binary on Debian 12.
"""
import argparse
import collections
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

from protocaffe import TEST
from protocaffe.errors import CaffeError
from protocaffe.net import build_net


def _dims(rng, name, low, high, single=None):
    """A 2-d size as Caffe takes it: ``name: v``, ``name: a name: b``, or ``single_h/_w``."""
    form = rng.integers(3 if single else 2)
    a, b = (int(v) for v in rng.integers(low, high + 1, 2))
    if form == 0:
        return f"{name}: {a}", (a, a)
    if form == 1:
        return f"{name}: {a} {name}: {b}", (a, b)
    return f"{single}_h: {a} {single}_w: {b}", (a, b)


def _conv(rng, shape, kind):
    c = shape[1]
    group = 2 if c % 2 == 0 and rng.random() < 0.4 else 1
    out = group * int(rng.integers(1, 4))
    kernel, _ = _dims(rng, "kernel_size", 1, 5, "kernel")
    stride, _ = _dims(rng, "stride", 1, 3, "stride") if rng.random() < 0.6 else ("", None)
    pad, _ = _dims(rng, "pad", 0, 2, "pad") if rng.random() < 0.6 else ("", None)
    dilation = f"dilation: {rng.integers(1, 3)}" if rng.random() < 0.3 else ""
    bias = "" if rng.random() < 0.8 else "bias_term: false"
    return (f'type: "{kind}" convolution_param {{ num_output: {out} {kernel} {stride} {pad} {dilation} '
            f'group: {group} {bias} weight_filler {{ type: "gaussian" std: 0.5 }} '
            f'bias_filler {{ type: "gaussian" std: 0.5 }} }}'), 1


def convolution(rng, shape):
    return _conv(rng, shape, "Convolution")


def deconvolution(rng, shape):
    return _conv(rng, shape, "Deconvolution")


def _conv_nd(rng, kind):
    """An N-d (1 to 3 spatial axes) convolution, sometimes with a leading axis before the channels."""
    axes, lead = int(rng.integers(1, 4)), int(rng.random() < 0.3)
    shape = tuple(int(v) for v in rng.integers(1, 3, 1 + lead)) + (int(rng.integers(1, 4)),) \
        + tuple(int(v) for v in rng.integers(1, 7, axes))

    def sizes(name, low, high):
        values = rng.integers(low, high + 1, 1 if rng.random() < 0.5 else axes)
        return " ".join(f"{name}: {v}" for v in values)
    text = (f'type: "{kind}" convolution_param {{ num_output: {rng.integers(1, 4)} axis: {1 + lead} '
            f'{sizes("kernel_size", 1, 3)} {sizes("stride", 1, 2)} {sizes("pad", 0, 1)} '
            f'weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" }} }}')
    return text, 1, shape


def convolution_nd(rng, shape):
    return _conv_nd(rng, "Convolution")


def deconvolution_nd(rng, shape):
    return _conv_nd(rng, "Deconvolution")


def pooling(rng, shape):
    pool = rng.choice(["MAX", "AVE"])
    if rng.random() < 0.15:
        return f'type: "Pooling" pooling_param {{ pool: {pool} global_pooling: true }}', 1
    k = [int(v) for v in rng.integers(1, 5, 2)]
    if rng.random() < 0.5:
        k[1] = k[0]
        kernel = f"kernel_size: {k[0]}"
    else:
        kernel = f"kernel_h: {k[0]} kernel_w: {k[1]}"
    text = f"pool: {pool} {kernel}"
    if rng.random() < 0.7:
        s = [int(v) for v in rng.integers(1, 4, 2)]
        text += f" stride: {s[0]}" if rng.random() < 0.5 else f" stride_h: {s[0]} stride_w: {s[1]}"
    if rng.random() < 0.6:
        p = [int(rng.integers(0, k[0])), int(rng.integers(0, k[1]))]
        text += f" pad: {min(p)}" if rng.random() < 0.4 else f" pad_h: {p[0]} pad_w: {p[1]}"
    return f'type: "Pooling" pooling_param {{ {text} }}', 1


def lrn(rng, shape):
    region = rng.choice(["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
    return (f'type: "LRN" lrn_param {{ local_size: {rng.choice([1, 3, 5])} alpha: {rng.uniform(0.01, 2):.3f} '
            f'beta: {rng.uniform(0.3, 1):.3f} k: {rng.uniform(0.5, 3):.3f} norm_region: {region} }}'), 1


def spp(rng, shape):
    return (f'type: "SPP" spp_param {{ pyramid_height: {rng.integers(1, 4)} '
            f'pool: {rng.choice(["MAX", "AVE"])} }}'), 1


def softmax(rng, shape):
    return f'type: "Softmax" softmax_param {{ axis: {rng.integers(-4, 4)} }}', 1


def reduction(rng, shape):
    op = rng.choice(["SUM", "ASUM", "SUMSQ", "MEAN"])
    return (f'type: "Reduction" reduction_param {{ operation: {op} axis: {rng.integers(0, 4)} '
            f'coeff: {rng.uniform(-2, 2):.3f} }}'), 1


def argmax(rng, shape):
    axis = f"axis: {rng.integers(0, 4)}" if rng.random() < 0.5 else ""
    return (f'type: "ArgMax" argmax_param {{ top_k: {rng.integers(1, 3)} '
            f'out_max_val: {str(rng.random() < 0.5).lower()} {axis} }}'), 1


def eltwise(rng, shape):
    op = rng.choice(["PROD", "SUM", "MAX"])
    coeff = f"coeff: {rng.uniform(-2, 2):.3f} coeff: {rng.uniform(-2, 2):.3f}" if op == "SUM" else ""
    return f'type: "Eltwise" eltwise_param {{ operation: {op} {coeff} }}', 2


def concat(rng, shape):
    return f'type: "Concat" concat_param {{ axis: {rng.integers(0, 4)} }}', 2


def crop(rng, shape):
    axis = int(rng.integers(0, 4))
    offsets = " ".join(f"offset: {rng.integers(0, 2)}" for _ in range(rng.integers(0, 2)))
    return f'type: "Crop" crop_param {{ axis: {axis} {offsets} }}', "crop"


def tile(rng, shape):
    return f'type: "Tile" tile_param {{ axis: {rng.integers(0, 4)} tiles: {rng.integers(1, 4)} }}', 1


def flatten(rng, shape):
    return f'type: "Flatten" flatten_param {{ axis: {rng.integers(0, 3)} end_axis: {rng.integers(-1, 4)} }}', 1


def mvn(rng, shape):
    return (f'type: "MVN" mvn_param {{ normalize_variance: {str(rng.random() < 0.5).lower()} '
            f'across_channels: {str(rng.random() < 0.5).lower()} eps: {rng.choice([1e-9, 1e-3, 0.5])} }}'), 1


def inner_product(rng, shape):
    return (f'type: "InnerProduct" inner_product_param {{ num_output: {rng.integers(1, 6)} '
            f'axis: {rng.integers(1, 4)} transpose: {str(rng.random() < 0.3).lower()} '
            f'weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" }} }}'), 1


def scale(rng, shape):
    axis = int(rng.integers(0, 4))
    num_axes = int(rng.integers(-1, 4 - axis + 1))
    return (f'type: "Scale" scale_param {{ axis: {axis} num_axes: {num_axes} bias_term: '
            f'{str(rng.random() < 0.5).lower()} filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }}'), 1


def prelu(rng, shape):
    return (f'type: "PReLU" prelu_param {{ channel_shared: {str(rng.random() < 0.3).lower()} '
            f'filler {{ type: "gaussian" }} }}'), 1


def im2col(rng, shape):
    kernel, _ = _dims(rng, "kernel_size", 1, 4, "kernel")
    stride, _ = _dims(rng, "stride", 1, 3, "stride")
    pad, _ = _dims(rng, "pad", 0, 2, "pad")
    return f'type: "Im2col" convolution_param {{ {kernel} {stride} {pad} }}', 1


def neuron(rng, shape):
    return str(rng.choice([
        f'type: "ReLU" relu_param {{ negative_slope: {rng.uniform(-1, 1):.3f} }}',
        f'type: "ELU" elu_param {{ alpha: {rng.uniform(0.1, 2):.3f} }}',
        f'type: "Power" power_param {{ power: {rng.choice([1, 2, 3])} scale: {rng.uniform(-2, 2):.3f} '
        f'shift: {rng.uniform(-1, 1):.3f} }}',
        'type: "AbsVal"', 'type: "BNLL"', 'type: "TanH"', 'type: "Sigmoid"',
        f'type: "Threshold" threshold_param {{ threshold: {rng.uniform(-1, 1):.3f} }}',
        f'type: "Exp" exp_param {{ base: {rng.choice([-1, 2, 0.5])} scale: {rng.uniform(-1, 1):.3f} }}',
    ])), 1


# ---- families with their own inputs: (layer text, {input name: array}, extra tops) ----------

def _shape(rng, axes=4, high=5):
    return tuple(int(v) for v in rng.integers(1, high + 1, axes))


def slice_layer(rng):
    shape = _shape(rng)
    axis = int(rng.integers(0, 4))
    n = shape[axis]
    points = sorted(set(int(v) for v in rng.integers(1, n, int(rng.integers(0, 3))))) if n > 1 else []
    text = f'type: "Slice" slice_param {{ axis: {axis} ' + " ".join(f"slice_point: {p}" for p in points) + " }"
    tops = [f"out{i}" for i in range(1, len(points) + 1)] if points else ([] if n == 1 else ["out1"])
    return text, {"x": rng.standard_normal(shape)}, tops


def reshape(rng):
    shape = _shape(rng)
    axis, num_axes = int(rng.integers(0, 4)), int(rng.integers(-1, 2))
    dims = [int(rng.choice([0, -1, 1, 2, 3])) for _ in range(int(rng.integers(0, 3)))]
    text = (f'type: "Reshape" reshape_param {{ shape {{ {" ".join(f"dim: {d}" for d in dims)} }} '
            f'axis: {axis} num_axes: {num_axes} }}')
    return text, {"x": rng.standard_normal(shape)}, []


def batch_norm(rng):
    return (f'type: "BatchNorm" batch_norm_param {{ use_global_stats: true eps: {rng.choice([1e-5, 0.1])} }}',
            {"x": rng.standard_normal(_shape(rng))}, [])


def bias(rng):
    shape = _shape(rng)
    axis = int(rng.integers(0, 4))
    if rng.random() < 0.5:
        return (f'type: "Bias" bias_param {{ axis: {axis} filler {{ type: "gaussian" }} }}',
                {"x": rng.standard_normal(shape)}, [])
    end = int(rng.integers(axis, 5))
    return (f'type: "Bias" bias_param {{ axis: {axis} }}',
            {"x": rng.standard_normal(shape), "y": rng.standard_normal(shape[axis:end] or (1,))}, [])


def embed(rng):
    dim = int(rng.integers(1, 6))
    x = rng.integers(0, dim, _shape(rng, int(rng.integers(1, 3))))
    return (f'type: "Embed" embed_param {{ num_output: {rng.integers(1, 4)} input_dim: {dim} '
            f'bias_term: {str(rng.random() < 0.5).lower()} weight_filler {{ type: "gaussian" }} '
            f'bias_filler {{ type: "gaussian" }} }}'), {"x": x}, []


def elementwise(rng):
    x = rng.standard_normal(_shape(rng))
    choice = int(rng.integers(7))
    if choice == 0:
        return (f'type: "Log" log_param {{ base: {rng.choice([-1, 2, 10])} scale: {rng.uniform(0.5, 2):.3f} '
                f'shift: {rng.uniform(0, 1):.3f} }}'), {"x": np.abs(x) + 0.1}, []
    if choice == 1:
        return (f'type: "Power" power_param {{ power: {rng.choice([0.5, -1, 1.5, 0])} scale: 1 '
                f'shift: 0 }}'), {"x": np.abs(x) + 0.1}, []
    if choice == 2:
        low = rng.uniform(-1, 0)
        return f'type: "Clip" clip_param {{ min: {low:.3f} max: {low + rng.uniform(0, 2):.3f} }}', {"x": x}, []
    if choice == 3:
        return f'type: "Swish" swish_param {{ beta: {rng.uniform(0.1, 3):.3f} }}', {"x": x}, []
    if choice == 4:
        return (f'type: "Dropout" dropout_param {{ dropout_ratio: {rng.uniform(0.1, 0.9):.3f} '
                f'scale_train: {str(rng.random() < 0.5).lower()} }}'), {"x": x}, []
    if choice == 5:
        return 'type: "Split"', {"x": x}, ["out1"]
    return f'type: "Softmax" softmax_param {{ axis: {rng.integers(0, 4)} }}', {"x": x}, []


def _labels(rng, n, classes, spatial=()):
    return rng.integers(0, classes, (n,) + spatial).astype(np.float32)


def softmax_loss(rng):
    n, c = int(rng.integers(1, 4)), int(rng.integers(2, 5))
    spatial = _shape(rng, int(rng.integers(0, 3)), 3)
    label = _labels(rng, n, c, spatial)
    ignore = f"ignore_label: {rng.integers(0, c)}" if rng.random() < 0.4 else ""
    norm = rng.choice(["FULL", "VALID", "BATCH_SIZE", "NONE"])
    kind = rng.choice(["SoftmaxWithLoss", "Accuracy"])
    if kind == "Accuracy":
        return (f'type: "Accuracy" accuracy_param {{ top_k: {rng.integers(1, c + 1)} {ignore} }}',
                {"x": rng.standard_normal((n, c) + spatial), "y": label}, [])
    return (f'type: "SoftmaxWithLoss" loss_param {{ normalization: {norm} {ignore} }}',
            {"x": rng.standard_normal((n, c) + spatial) * 3, "y": label}, [])


def other_loss(rng):
    n, d = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    x = rng.standard_normal((n, d)) * 2
    choice = int(rng.integers(5))
    if choice == 0:
        return 'type: "EuclideanLoss"', {"x": x, "y": rng.standard_normal((n, d))}, []
    if choice == 1:
        return ('type: "SigmoidCrossEntropyLoss"', {"x": x, "y": rng.integers(0, 2, (n, d)).astype(np.float32)}, [])
    if choice == 2:
        return (f'type: "HingeLoss" hinge_loss_param {{ norm: {rng.choice(["L1", "L2"])} }}',
                {"x": x, "y": _labels(rng, n, d)}, [])
    if choice == 3:
        p = rng.uniform(0.01, 1, (n, d))
        return 'type: "MultinomialLogisticLoss"', {"x": p / p.sum(1, keepdims=True), "y": _labels(rng, n, d)}, []
    return (f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {rng.uniform(0.5, 2):.3f} '
            f'legacy_version: {str(rng.random() < 0.5).lower()} }}'),         {"x": x, "y": rng.standard_normal((n, d)), "z": rng.integers(0, 2, (n,)).astype(np.float32)}, []


def recurrent(rng):
    t, n, d = int(rng.integers(1, 5)), int(rng.integers(1, 3)), int(rng.integers(1, 4))
    cont = (rng.random((t, n)) < 0.7).astype(np.float32)
    cont[0] = 0
    kind = rng.choice(["LSTM", "RNN"])
    inputs = {"x": rng.standard_normal((t, n, d)), "y": cont}
    if rng.random() < 0.3:
        inputs["z"] = rng.standard_normal((n, int(rng.integers(1, 3))))  # the static input
    return (f'type: "{kind}" recurrent_param {{ num_output: {rng.integers(1, 4)} '
            f'weight_filler {{ type: "uniform" min: -0.5 max: 0.5 }} bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }}'),             inputs, []


OWN_INPUTS = {"Slice": slice_layer, "Reshape": reshape, "BatchNorm": batch_norm, "Bias": bias, "Embed": embed,
              "Elementwise": elementwise, "SoftmaxLoss": softmax_loss, "Loss": other_loss,
              "Recurrent": recurrent}

TYPES = {"Convolution": convolution, "Deconvolution": deconvolution, "ConvolutionND": convolution_nd,
         "DeconvolutionND": deconvolution_nd, "Pooling": pooling, "LRN": lrn,
         "SPP": spp, "Softmax": softmax, "Reduction": reduction, "ArgMax": argmax, "Eltwise": eltwise,
         "Concat": concat, "Crop": crop, "Tile": tile, "Flatten": flatten, "MVN": mvn,
         "InnerProduct": inner_product, "Scale": scale, "PReLU": prelu, "Im2col": im2col, "Neuron": neuron}


def make_own_case(folder, rng, kind):
    layer, data, tops = OWN_INPUTS[kind](rng)
    data = {name: np.asarray(v, np.float32) for name, v in data.items()}
    rows = min(len(v) for v in data.values())
    data = {name: v[:rows] for name, v in data.items()}  # HDF5Data reads rows of every top together
    return _write(folder, layer, data, ["out"] + tops)


def _write(folder, layer, data, tops):
    with h5py.File(folder / "in.h5", "w") as f:
        for name, value in data.items():
            f[name] = value
    (folder / "list.txt").write_text("in.h5\n")
    rows = len(next(iter(data.values())))
    layer = layer.replace("type:", " ".join(f'bottom: "{n}"' for n in data) + " "
                          + " ".join(f'top: "{t}"' for t in tops) + " type:", 1)
    data_tops = " ".join(f'top: "{n}"' for n in data)
    text = (f'name: "diff"\nlayer {{ name: "in" type: "HDF5Data" {data_tops} '
            f'hdf5_data_param {{ source: "list.txt" batch_size: {rows} }} }}\n'
            f'layer {{ name: "l" {layer} }}\n')
    (folder / "net.prototxt").write_text(text)
    return folder / "net.prototxt"


def make_case(folder, rng, kind):
    """Write the case's input, prototxt and list file; returns the prototxt path."""
    if kind in OWN_INPUTS:
        return make_own_case(folder, rng, kind)
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(rng.integers(1, 10)), int(rng.integers(1, 10)))
    layer, bottoms, *own_shape = TYPES[kind](rng, shape)
    shape = own_shape[0] if own_shape else shape
    data = {"x": rng.standard_normal(shape).astype(np.float32)}
    if bottoms == 2:
        other = list(shape)
        if "Concat" in layer:
            axis = int(re.search(r"axis: (-?\d+)", layer).group(1))
            other[axis] = int(rng.integers(1, 4)) if axis else shape[0]
        data["y"] = rng.standard_normal(other).astype(np.float32)
    elif bottoms == "crop":
        data["y"] = np.zeros([int(rng.integers(1, d + 1)) for d in shape], np.float32)
    if "y" in data and data["y"].shape[0] != shape[0]:  # HDF5Data reads rows of every top together
        data["y"] = np.resize(data["y"], (shape[0],) + data["y"].shape[1:])
    return _write(folder, layer, data, ["out"])


def _randomize_statistics(net):
    """BatchNorm's blobs start at zero (no filler); give them values worth comparing."""
    g = np.random.default_rng(0)
    for layer in net.layers.values():
        if layer.type == "BatchNorm":
            for name, low, high in (("mean", -1, 1), ("variance", 0.5, 2), ("scale_factor", 0.5, 2)):
                blob = getattr(layer, name)
                blob.data.copy_(torch.from_numpy(g.uniform(low, high, tuple(blob.shape)).astype(np.float32)))


def ours(folder):
    """protocaffe's outputs in Caffe's order, flattened, or the error's text."""
    try:
        with contextlib.chdir(folder):  # the HDF5 list is read from the working directory, as Caffe does
            net = build_net("net.prototxt", TEST, seed=1)
            _randomize_statistics(net)
            blobs = net()
            net.save("w.caffemodel")
    except CaffeError as e:
        return None, str(e)
    except Exception as e:  # a crash is a failure whatever Caffe does
        return "crash", f"{type(e).__name__}: {e}"
    return np.concatenate([blobs[n].detach().double().ravel().numpy() for n in net.output_names]), None


def caffes(folder, caffe):
    """Caffe's logged outputs, flattened, or the fatal line."""
    weights = folder / "w.caffemodel"
    if not weights.exists():  # we refused: let Caffe try with no weights of ours
        from protocaffe.proto import caffe_pb2
        weights.write_bytes(caffe_pb2.NetParameter(name="diff").SerializeToString())
    run = subprocess.run([caffe, "test", "--model", "net.prototxt", "--weights", weights.name,
                          "--iterations", "1"], cwd=folder, capture_output=True, text=True)
    if run.returncode:
        fatal = [line for line in run.stderr.splitlines() if line.startswith("F")]
        return None, (fatal or run.stderr.splitlines()[-1:] or ["?"])[0]
    return np.array([float(v) for v in re.findall(r"Batch 0, \S+ = (\S+)", run.stderr)]), None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caffe", required=True)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--types", default=",".join(list(TYPES) + list(OWN_INPUTS)))
    parser.add_argument("--keep", default="/tmp/diff_caffe_failures")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    kinds = args.types.split(",")
    keep = Path(args.keep)
    tally = collections.Counter()
    for i in range(args.cases):
        kind = str(rng.choice(kinds))
        folder = Path(tempfile.mkdtemp(prefix="diff_caffe_"))
        make_case(folder, rng, kind)
        got, our_error = ours(folder)
        want, caffe_error = caffes(folder, args.caffe)
        if isinstance(got, str):
            verdict = "FAIL: protocaffe crashed"
        elif got is None and want is None:
            verdict = "both refuse"
        elif got is None and want.size == 0:
            verdict = "both refuse"  # Caffe built an empty output; protocaffe says the window does not fit
        elif got is None or want is None:
            verdict = "FAIL: only " + ("protocaffe" if got is None else "Caffe") + " refuses"
        elif got.shape != want.shape:
            verdict = f"FAIL: {got.size} values against Caffe's {want.size}"
        elif np.allclose(got, want, rtol=2e-5, atol=1e-5 + 5e-6 * float(np.nanmax(np.abs(want), initial=0)),
                         equal_nan=True):  # 0 / 0 in an AVE window holding no input is NaN in both
            verdict = "match"
        else:
            verdict = f"FAIL: max difference {np.abs(got - want).max():.3g}"
        tally[(kind, verdict.split(":")[0])] += 1
        if verdict.startswith("FAIL"):
            target = keep / f"case{i:04d}_{kind}"
            shutil.copytree(folder, target, dirs_exist_ok=True)
            layer = (folder / "net.prototxt").read_text().splitlines()[-1]
            print(f"case {i} {kind}: {verdict}\n  {layer}\n  ours: {our_error}\n  caffe: {caffe_error}\n"
                  f"  kept in {target}", flush=True)
        shutil.rmtree(folder)
    print(f"\n{args.cases} cases (seed {args.seed}):")
    for (kind, verdict), n in sorted(tally.items()):
        print(f"  {kind:14} {verdict:12} {n}")
    return int(any(v == "FAIL" for _, v in tally))


if __name__ == "__main__":
    sys.exit(main())
