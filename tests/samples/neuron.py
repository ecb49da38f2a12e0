"""Samples of the neuron layers (protocaffe/layer_types/neuron.py) for tests/test_registry.py."""
import torch

from protocaffe.proto import caffe_pb2


def layer(type_, body=""):
    return f'name: "l" type: "{type_}" bottom: "b0" top: "t0" {body}'


def away_from_zero(i, shape, g):
    """Inputs at least 0.2 from the kink at 0, so finite differences do not straddle it."""
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return x + 0.2 * torch.sign(x)


def positive(i, shape, g):
    return torch.rand(shape, generator=g, dtype=torch.float64) + 0.5


def away_from_clip(i, shape, g):
    """Values in steps of 0.1 offset by 0.05, so none lies near the Clip bounds of the sample."""
    n = int(torch.tensor(shape).prod())
    return (torch.randperm(n, generator=g).double() * 0.1 - 0.55).reshape(shape)


def same_mask_every_call(layer):
    """Reseed the layer's generator before each forward: gradcheck needs one fixed dropout mask."""
    def reseed(module, args):
        module.ctx.generator.manual_seed(3)
    layer.register_forward_pre_hook(reseed)


SAMPLES = {
    "ReLU": (layer("ReLU", "relu_param { negative_slope: 0.1 }"), [(2, 3, 4)],
             {"make_bottom": away_from_zero}),
    "Sigmoid": (layer("Sigmoid"), [(2, 3)]),
    "TanH": (layer("TanH"), [(2, 3)]),
    "AbsVal": (layer("AbsVal"), [(2, 3)], {"make_bottom": away_from_zero}),
    "BNLL": (layer("BNLL"), [(2, 3)]),
    "ELU": (layer("ELU", "elu_param { alpha: 0.5 }"), [(2, 3)], {"make_bottom": away_from_zero}),
    "Exp": (layer("Exp", "exp_param { base: 2 scale: 0.5 shift: 0.1 }"), [(2, 3)]),
    "Log": (layer("Log", "log_param { base: 10 scale: 2 shift: 0.1 }"), [(2, 3)], {"make_bottom": positive}),
    "Power": (layer("Power", "power_param { power: 3 scale: 0.5 shift: 1 }"), [(2, 3)]),
    "PReLU": (layer("PReLU", 'prelu_param { filler { type: "gaussian" std: 0.3 } }'), [(2, 3, 2, 2)],
              {"make_bottom": away_from_zero}),
    "Threshold": (layer("Threshold", "threshold_param { threshold: 0.1 }"), [(2, 3)], {"gradcheck": False}),
    "Dropout": (layer("Dropout", "dropout_param { dropout_ratio: 0.3 }"), [(4, 5)],
                {"phase": caffe_pb2.TRAIN, "prepare": same_mask_every_call}),
    "Swish": (layer("Swish", "swish_param { beta: 1.5 }"), [(2, 3)]),
    "Clip": (layer("Clip", "clip_param { min: -0.3 max: 0.3 }"), [(2, 5)], {"make_bottom": away_from_clip}),
}
