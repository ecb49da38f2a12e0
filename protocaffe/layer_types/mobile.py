"""Mobile-network forks' layers: ShuffleChannel (ShuffleNet), ConvolutionDepthwise and
DepthwiseConvolution (depthwise MobileNets), ReLU6 (MobileNet v2 forks) and Axpy (SENet).

Parameters: shuffle_channel_param and relu6_param are the forks' extensions
(proto/forks/shufflenet.proto, mobilenet.proto); the depthwise types read BVLC's
convolution_param; Axpy has none.
"""
import torch

from protocaffe.layer_types.base import Layer, register
from protocaffe.layer_types.vision import Convolution


@register
class ShuffleChannel(Layer):
    """ShuffleNet's channel shuffle, (N, C, ...) -> same shape: with g = ``group``, output channel
    j g + i is input channel i (C / g) + j, i.e. (N, g, C/g, ...) transposed to (N, C/g, g, ...).
    C must be a multiple of g. The gradient is the inverse permutation."""
    type = "ShuffleChannel"

    def setup(self, bottom_shapes):
        self.group = self.layer_param("shuffle_channel_param").group
        channels = bottom_shapes[0][1] if len(bottom_shapes[0]) > 1 else 0
        if self.group < 1 or channels % self.group:
            raise self.error(f"the {channels} channels must split into group {self.group} equal groups")

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        n, c = x.shape[:2]
        return x.reshape((n, self.group, c // self.group) + tuple(x.shape[2:])).transpose(1, 2).reshape(x.shape)


@register
class ConvolutionDepthwise(Convolution):
    """Depthwise convolution of BVLC pull request #5665 (farmingyard/caffe-mobilenet, ShuffleNet's
    prototxts): (N, C, H, W) -> (N, C, H', W'), one kh x kw filter per channel; weight
    (C, 1, kh, kw), bias (C,). It reads convolution_param but, as the fork, ignores its
    ``num_output`` and ``group``: the output has the input's channels. This is Convolution with
    group = num_output = C, blob layout included (OpenCV's dnn reads it so)."""
    type = "ConvolutionDepthwise"

    def outputs_and_group(self, p, channels):
        return channels, channels


@register
class DepthwiseConvolution(Convolution):
    """yonghenglh6/DepthwiseConvolution's layer: BVLC Convolution in every respect (its CPU code is
    Caffe's grouped convolution); nets use it with group = num_output = C. The fork's GPU kernel
    assumes one output per group and ignores dilation; the CPU semantics are the ones here."""
    type = "DepthwiseConvolution"


@register
class ReLU6(Layer):
    """y = min(max(x, 0) + negative_slope min(x, 0), 6), any shape; in place allowed.

    One type of two forks: chuanqi305/ssd's (relu6_param { engine }, no slope) and RuiminChen's
    (relu6_param { negative_slope }). Gradient dy ((x > 0) + negative_slope (x <= 0)) (x < 6),
    as both forks' backward (so 0 at x = 6, where PyTorch's hardtanh passes it); for a negative
    slope the forward keeps slope x where that exceeds 6."""
    type = "ReLU6"

    def setup(self, bottom_shapes):
        self.slope = self.layer_param("relu6_param").negative_slope

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        leaky = torch.where(x > 0, x, x * self.slope) if self.slope else torch.relu(x)
        return torch.where(x < 6, leaky, 6.0)


@register
class Axpy(Layer):
    """SENet's fused excitation: bottoms (a, x, y) -> a x + y, x's shape (N, C, H, W).

    a is (N, C) or (N, C, 1, 1), one factor per channel; y has x's shape. Gradients:
    da = sum over (H, W) of dtop x, dx = a dtop, dy = dtop. OpenCV's dnn swaps the operands
    (a * bottom[2] + bottom[1]); SENet's own layer, followed here, scales bottom[1]."""
    type = "Axpy"
    num_bottoms = 3

    def setup(self, bottom_shapes):
        a, x, y = (tuple(s) for s in bottom_shapes)
        if a[:2] != x[:2] or len(a) not in (2, 4) or a[2:] not in ((), (1, 1)) or x != y:
            raise self.error(f"needs a (N, C) or (N, C, 1, 1), and x and y of one shape (N, C, ...), "
                             f"found {a}, {x} and {y}")

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[1]]

    def forward(self, a, x, y):
        return a.reshape(a.shape[:2] + (1,) * (x.dim() - 2)) * x + y
