"""The deployed plan's own ops: a convolution with what folded and fused into it, and a run of
per-channel affine layers as one multiply-add.

A :class:`FusedConv` computes its convolution by one of these algorithms:

- ``onednn``, the default for 2-d convolutions on the CPU: oneDNN with the weights kept in
  its blocked layout and the sum and the activation as post-ops;
- ``torch``, the default elsewhere (CUDA, 1-d and 3-d, Deconvolution, InnerProduct): the
  layer itself on the folded weights, then the sum and the activation;
- ``winograd2``, ``winograd4``: Winograd's F(2x2, 3x3) or F(4x4, 3x3) on the CPU
  (:mod:`protocaffe.deploy.winograd`; 3x3, stride 1, one group), where measured faster
  (:mod:`protocaffe.deploy.settings`).
"""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from protocaffe.deploy import folding, winograd


def onednn_available(device):
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


def _stamp(t):
    return id(t), t.data_ptr(), t._version


class _Folded(torch.nn.Module):
    """What the fused ops share: the source tensors' stamps, to fold again when they change."""

    def sources(self):
        """(module, blob name) of every tensor the folded weights are made from."""
        return [(m, n) for m in self.layers() for n in m.blob_names]

    def stamp(self):
        """Which tensors, where, at which autograd version: what the packed weights were made from."""
        return [_stamp(getattr(m, n)) for m, n in self.sources()]

    def stale(self):
        return self._stamp != self.stamp()

    def affine(self):
        """The composed (scale, shift) of ``self.affines``, in float64."""
        scale, shift = folding.channel_affine(self.affines[0])
        for layer in self.affines[1:]:
            scale, shift = folding.compose((scale, shift), folding.channel_affine(layer))
        return scale, shift


class FusedConv(_Folded):
    """A Convolution, Deconvolution or InnerProduct (``head``) with the per-channel affine
    layers folded into its weights, then optionally ``+ other`` (an Eltwise SUM's other
    bottom) and an activation layer. ``forward(x[, other])``."""

    def __init__(self, head, affines=(), add=False, act=None):
        super().__init__()
        self.head, self.affines, self.add, self.act = head, list(affines), add, act
        self.name = head.name
        self._stamp = None

    def layers(self):
        return [self.head] + self.affines

    def fold(self):
        """The folded (weight, bias), or the head's own where nothing folds in."""
        head = self.head
        if not self.affines:
            return head.weight.detach(), None if head.bias is None else head.bias.detach()
        return folding.ABSORBERS[head.type](head, *self.affine())

    def algorithms(self):
        """The algorithms that can compute this layer on its device, the default first."""
        head = self.head
        if not (head.type == "Convolution" and len(head.kernel) == 2 and onednn_available(head.weight.device)):
            return ["torch"]
        return ["onednn"] + (["winograd2", "winograd4"] if winograd.fits(head) else [])

    def pack(self, settings, keep_others=False):
        """Fold, and get ready to run by the algorithm ``settings`` name for this layer (else the
        default; ``torch`` computes any layer). ``keep_others`` keeps what other algorithms
        prepared from the same weights (while they are measured in turns)."""
        stamp = self.stamp()
        if stamp != self._stamp or not keep_others:
            self._stamp, self._prepared = stamp, {}
            self.weight, self.bias = self.fold()
        options = self.algorithms()
        self.algorithm = settings.algorithm(self.name)
        if self.algorithm not in options + ["torch"]:
            self.algorithm = options[0]
        self.attr = folding.ACTIVATIONS[self.act.type](self.act) if self.act is not None else ("none", [])
        if self.algorithm.startswith("winograd") and self.algorithm not in self._prepared:
            self._prepared[self.algorithm] = winograd.Winograd(self.weight, self.head.pad, int(self.algorithm[-1]))
        self.winograd = self._prepared.get(self.algorithm) if self.algorithm.startswith("winograd") else None
        self.torch_weight = self.weight
        if self.algorithm == "torch" and settings.channels_last and self.weight.dim() == 4:
            self.torch_weight = self.weight.contiguous(memory_format=torch.channels_last)

    def forward(self, x, other=None):
        if self.algorithm == "onednn":
            return self._onednn(x, other)
        if self.winograd is not None:
            y = self.winograd(x)
            if self.bias is not None:
                y = y + self.bias.view(1, -1, 1, 1)
        else:
            params = {"weight": self.torch_weight}
            if self.bias is not None:
                params["bias"] = self.bias
            y = functional_call(self.head, params, (x,))
        if other is not None:
            y = y + other
        return y if self.act is None else self.act(y)

    def _onednn(self, x, other):
        """oneDNN's convolution, its weights reordered on the first call for each input shape
        (the layout oneDNN picks depends on it)."""
        head = self.head
        extra = head.overhang(*x.shape[2:])  # Caffe's zeros past the end for a window larger than the input
        if any(extra):
            x = F.pad(x, (0, extra[1], 0, extra[0]))
        args = (list(head.pad), list(head.stride), list(head.dilation), head.group)
        shape, weight = self._prepared.get("onednn", (None, None))
        if shape != x.shape:
            weight = torch.ops.mkldnn._reorder_convolution_weight(self.weight, *args, list(x.shape))
            self._prepared["onednn"] = x.shape, weight
        attr, scalars = self.attr
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, *args, attr, scalars, "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, weight, self.bias, *args, "add", None, None if attr == "none" else attr, scalars, "")


class FusedAffine(_Folded):
    """A run of per-channel affine layers as one ``x * scale + shift`` along axis 1."""

    def __init__(self, affines):
        super().__init__()
        self.affines = list(affines)
        self.name = self.affines[0].name
        self._stamp = None

    def layers(self):
        return self.affines

    def pack(self, settings):
        self._stamp = self.stamp()
        scale, shift = self.affine()
        self.scale, self.shift = scale.float(), shift.float()

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(view), x, self.scale.view(view))
