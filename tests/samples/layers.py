"""Samples for the layer families in protocaffe/layers (vision, neuron, loss, common, normalization)."""
import torch

from protocaffe.proto import caffe_pb2


def labels(classes):
    return lambda i, shape, g: (torch.randn(shape, generator=g, dtype=torch.float64) if i == 0 else
                                torch.randint(0, classes, shape, generator=g).double())


def indices(n):
    return lambda i, shape, g: torch.randint(0, n, shape, generator=g).double()


def away_from_zero(i, shape, g):
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return x + 0.2 * torch.sign(x)


def positive(i, shape, g):
    return torch.rand(shape, generator=g, dtype=torch.float64) + 0.5


def distinct(i, shape, g):
    """Values far apart, so max/argmax choices are stable under gradcheck's nudges."""
    n = int(torch.tensor(shape).prod()) if shape else 1
    return (torch.randperm(n, generator=g).double() * 0.1 + 0.05 * i).reshape(shape)


def sig_targets(i, shape, g):
    return torch.randn(shape, generator=g, dtype=torch.float64) if i == 0 else \
        torch.rand(shape, generator=g, dtype=torch.float64)


def L(type_, body="", bottoms=1, tops=1):
    b = " ".join(f'bottom: "b{i}"' for i in range(bottoms))
    t = " ".join(f'top: "t{i}"' for i in range(tops))
    return f'name: "l" type: "{type_}" {b} {t} {body}'


NOGRAD = {"gradcheck": False}
G = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 }'

SAMPLES = {
    # vision
    "Convolution": (L("Convolution", f"convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 {G} }}"),
                    [(2, 4, 5, 5)]),
    "Deconvolution": (L("Deconvolution", f"convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 group: 2 {G} }}"),
                      [(2, 2, 3, 3)]),
    "Pooling": (L("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"), [(2, 3, 6, 6)]),
    "LRN": (L("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"), [(2, 5, 3, 3)]),
    "InnerProduct": (L("InnerProduct", f"inner_product_param {{ num_output: 3 {G} }}"), [(2, 3, 2, 2)]),
    "Embed": (L("Embed", f"embed_param {{ num_output: 3 input_dim: 5 {G} }}"), [(4,)],
              {"make_bottom": indices(5), "gradcheck": False}),
    "Crop": (L("Crop", "crop_param { axis: 2 offset: 1 }", bottoms=2), [(2, 3, 5, 5), (2, 3, 3, 3)]),
    # neuron
    "ReLU": (L("ReLU", "relu_param { negative_slope: 0.1 }"), [(2, 3, 4)], {"make_bottom": away_from_zero}),
    "Sigmoid": (L("Sigmoid"), [(2, 3)]),
    "TanH": (L("TanH"), [(2, 3)]),
    "AbsVal": (L("AbsVal"), [(2, 3)], {"make_bottom": away_from_zero}),
    "BNLL": (L("BNLL"), [(2, 3)]),
    "ELU": (L("ELU", "elu_param { alpha: 0.5 }"), [(2, 3)], {"make_bottom": away_from_zero}),
    "Exp": (L("Exp", "exp_param { base: 2 scale: 0.5 shift: 0.1 }"), [(2, 3)]),
    "Log": (L("Log", "log_param { scale: 2 shift: 0.1 }"), [(2, 3)], {"make_bottom": positive}),
    "Power": (L("Power", "power_param { power: 2 scale: 0.5 shift: 1 }"), [(2, 3)]),
    "PReLU": (L("PReLU"), [(2, 3, 2)], {"make_bottom": away_from_zero}),
    "Threshold": (L("Threshold", "threshold_param { threshold: 0.1 }"), [(2, 3)], NOGRAD),
    "Dropout": (L("Dropout", "dropout_param { dropout_ratio: 0.3 }"), [(2, 3)]),
    "Swish": (L("Swish", "swish_param { beta: 1.5 }"), [(2, 3)]),
    "Clip": (L("Clip", "clip_param { min: -0.45 max: 0.45 }"), [(2, 3)], {"make_bottom": distinct}),
    # loss
    "Softmax": (L("Softmax", "softmax_param { axis: 1 }"), [(2, 4, 3)]),
    "SoftmaxWithLoss": (L("SoftmaxWithLoss", "loss_param { ignore_label: 1 }", bottoms=2, tops=2),
                        [(3, 4, 2), (3, 2)], {"make_bottom": labels(4), "grad_inputs": [0]}),
    "EuclideanLoss": (L("EuclideanLoss", bottoms=2), [(3, 4), (3, 4)]),
    "HingeLoss": (L("HingeLoss", "hinge_loss_param { norm: L2 }", bottoms=2), [(3, 4), (3,)],
                  {"make_bottom": labels(4), "grad_inputs": [0]}),
    "SigmoidCrossEntropyLoss": (L("SigmoidCrossEntropyLoss", bottoms=2), [(3, 4), (3, 4)],
                                {"make_bottom": sig_targets, "grad_inputs": [0]}),
    "MultinomialLogisticLoss": (L("MultinomialLogisticLoss", bottoms=2), [(3, 4), (3,)],
                                {"make_bottom": lambda i, s, g: positive(i, s, g) if i == 0 else labels(4)(i, s, g),
                                 "grad_inputs": [0]}),
    "Accuracy": (L("Accuracy", "accuracy_param { top_k: 2 }", bottoms=2, tops=2), [(5, 4), (5,)],
                 {"make_bottom": labels(4), "gradcheck": False}),
    # common
    "Concat": (L("Concat", "concat_param { axis: 1 }", bottoms=2), [(2, 3, 2), (2, 1, 2)]),
    "Eltwise": (L("Eltwise", "eltwise_param { operation: MAX }", bottoms=3), [(2, 3)] * 3,
                {"make_bottom": distinct}),
    "Flatten": (L("Flatten", "flatten_param { axis: 1 end_axis: 2 }"), [(2, 3, 4, 5)]),
    "Reshape": (L("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }"), [(2, 3, 4)]),
    "Slice": (L("Slice", "slice_param { axis: 1 slice_point: 1 slice_point: 3 }", tops=3), [(2, 4, 2)]),
    "Split": (L("Split", tops=2), [(2, 3)]),
    "Silence": (L("Silence", tops=0), [(2, 3)], NOGRAD),
    "Tile": (L("Tile", "tile_param { axis: 1 tiles: 3 }"), [(2, 3)]),
    "Reduction": (L("Reduction", "reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 }"), [(2, 3, 4)]),
    "ArgMax": (L("ArgMax", "argmax_param { top_k: 2 out_max_val: true }"), [(2, 5, 1, 1)],
               {"make_bottom": distinct, "gradcheck": False}),
    # normalization
    "BatchNorm": (L("BatchNorm"), [(4, 3, 2, 2)], {"phase": caffe_pb2.TRAIN}),
    "MVN": (L("MVN", "mvn_param { across_channels: true }"), [(2, 3, 2, 2)]),
    "Scale": (L("Scale", 'scale_param { axis: 1 num_axes: 1 bias_term: true filler { type: "gaussian" } }'),
              [(2, 3, 2)]),
    "Bias": (L("Bias", "bias_param { axis: 1 }", bottoms=2), [(2, 3, 2), (3,)]),
}
