"""The deployed plan's own ops: a convolution with what folded and fused into it, and a run of
per-channel affine layers as one multiply-add.

A :class:`FusedConv` computes its convolution by one of these algorithms:

- ``onednn``, the default for 2-d convolutions and InnerProducts on the CPU: oneDNN, a
  convolution's weights kept in its blocked layout and the sum and the activation as post-ops,
  an InnerProduct's activation as a post-op (on the AMD EPYC Zen 3 this was measured on,
  oneDNN's product ran CaffeNet's and VGG-16's fc6 in half MKL's time at batch 10; which is
  faster is measured per machine and layer, :mod:`protocaffe.deploy.settings`);
- ``torch``, the default elsewhere (CUDA, 1-d and 3-d, Deconvolution): the layer itself on
  the folded weights, then the sum and the activation;
- ``winograd2``, ``winograd4``: Winograd's F(2x2, 3x3) or F(4x4, 3x3) on the CPU
  (:mod:`protocaffe.deploy.winograd`; 3x3, stride 1, one group), where measured faster
  (:mod:`protocaffe.deploy.settings`);
- ``native4``: the same F(4x4, 3x3) as one compiled pass over the image, each block of
  tiles transformed, multiplied and transformed back in the core's cache
  (:mod:`protocaffe.deploy.native`; any groups, each group's channels in and out a
  multiple of 8), where a C compiler is at hand and it is measured faster;
- ``blocks``: an InnerProduct as a batched product over blocks of its weight's rows, one
  block per thread (:mod:`protocaffe.deploy.blocks`), where measured faster;
- ``nnpack``: NNPACK's convolution (Winograd F(6x6, 3x3) for 3x3 kernels, Fourier transforms
  for larger ones) where torch has it, for 2-d convolutions with stride 1 and one group on the
  CPU, where measured faster (on the AMD EPYC Zen 3 this was measured on: VGG-16's first
  convolutions at batch 1, about 1.6x oneDNN's speed). Its outputs are within about 1e-5 of
  the output's scale, as Winograd's F(4x4, 3x3).
"""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from protocaffe.deploy import blocks, folding, native, winograd


def onednn_available(device):
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


def nnpack_fits(head):
    """Whether NNPACK computes this layer: a 2-d Convolution with stride 1, no dilation, one group,
    a kernel larger than 1x1 (a 1x1 convolution is a matrix product, where NNPACK has nothing to
    add: measured here, ResNet-50's 1x1 convolutions at batch 10 took 40 ms each in NNPACK)."""
    return (head.type == "Convolution" and len(head.kernel) == 2 and head.stride == (1, 1)
            and head.dilation == (1, 1) and head.group == 1 and head.kernel != (1, 1)
            and torch._nnpack_available())


def _getter(module, name):
    """A quick lookup of ``module.name``: the dict that holds it, else getattr."""
    for d in (module._parameters, module._buffers, module.__dict__):
        if name in d:
            return d.get
    return lambda n: getattr(module, n)


class Watch:
    """Tensors ``getattr(module, name)`` for (module, name) in ``sources``, watched for a change:
    replaced, written in place, or given other storage since :meth:`note` (checked before every
    call of a deployed net: a dict lookup and two reads per tensor)."""

    def __init__(self, sources):
        self.sources, self.noted = list(sources), None

    def note(self):
        self.noted = []
        for m, n in self.sources:
            t = getattr(m, n)
            self.noted.append((_getter(m, n), n, t, t._version, t.data_ptr()))

    def stale(self):
        if self.noted is None:
            return True
        for get, n, t, v, p in self.noted:
            if get(n) is not t or t._version != v or t.data_ptr() != p:
                return True
        return False


class _Folded(torch.nn.Module):
    """What the fused ops share: the source tensors watched, to fold again when they change."""

    def sources(self):
        """(module, blob name) of every tensor the folded weights are made from."""
        return [(m, n) for m in self.layers() for n in m.blob_names]

    def watch(self):
        """Note which tensors, where, at which autograd version the packed weights are made from."""
        self._watched.note()

    def stale(self):
        return self._watched.stale()

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
        self._watched = Watch(self.sources())

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
        if not onednn_available(head.weight.device) or head.weight.dtype != torch.float32:
            return ["torch"]
        if head.type == "InnerProduct":
            return ["onednn", "torch"] + (["blocks"] if blocks.parts() > 1 else [])
        if not (head.type == "Convolution" and len(head.kernel) == 2):
            return ["torch"]
        return (["onednn"] + (["winograd2", "winograd4"] if winograd.fits(head) else [])
                + (["native4"] if native.fits(head) else []) + (["nnpack"] if nnpack_fits(head) else []))

    def pack(self, settings, keep_others=False):
        """Fold, and get ready to run by the algorithm ``settings`` name for this layer (else the
        default; ``torch`` computes any layer). ``keep_others`` keeps what other algorithms
        prepared from the same weights (while they are measured in turns); without it only
        what this layer's algorithm prepared is kept, so settings that change other layers (or
        the layout, or the engine) do not make this one fold and reorder its weights again."""
        if self.stale():
            self.watch()
            self._prepared = {}
            self.weight, self.bias = self.fold()
        options = self.algorithms()
        self.algorithm = settings.algorithm(self.name)
        if self.algorithm not in options + ["torch"]:
            self.algorithm = options[0]
        if not keep_others:
            self._prepared = {a: v for a, v in self._prepared.items() if a == self.algorithm}
        self.attr = folding.ACTIVATIONS[self.act.type](self.act) if self.act is not None else ("none", [])
        if self.algorithm.startswith("winograd") and self.algorithm not in self._prepared:
            self._prepared[self.algorithm] = winograd.Winograd(self.weight, self.head.pad, int(self.algorithm[-1]))
        if self.algorithm == "native4" and self.algorithm not in self._prepared:
            self._prepared[self.algorithm] = native.NativeWinograd(self.weight, self.head.pad, self.head.group)
        self.winograd = (self._prepared.get(self.algorithm)
                         if self.algorithm.startswith(("winograd", "native")) else None)
        self.torch_weight = self.weight
        if self.algorithm in ("onednn", "blocks") and self.head.type == "InnerProduct":  # (num_output, K)
            self.torch_weight = (self.weight.t() if self.head.transpose else self.weight).contiguous()
        if self.algorithm == "blocks" and "blocks" not in self._prepared:
            self._prepared["blocks"] = blocks.RowBlocks(self.torch_weight, self.bias, blocks.parts())
        if self.algorithm == "torch" and settings.channels_last and self.weight.dim() == 4:
            self.torch_weight = self.weight.contiguous(memory_format=torch.channels_last)

    def forward(self, x, other=None):
        if self.algorithm in ("onednn", "blocks"):
            return self._onednn(x, other) if self.head.type == "Convolution" else self._linear(x, other)
        if self.winograd is not None:
            if other is None and self.attr[0] == "relu":
                return self.winograd(x, self.bias, relu=True)
            y = self.winograd(x, self.bias)
        elif self.algorithm == "nnpack":
            y = torch._nnpack_spatial_convolution(self._overhung(x).contiguous(), self.weight, self.bias,
                                                  list(self.head.pad))
        else:
            params = {"weight": self.torch_weight}
            if self.bias is not None:
                params["bias"] = self.bias
            y = functional_call(self.head, params, (x,))
        if other is not None:
            y = y + other
        return y if self.act is None else self.act(y)

    def _linear(self, x, other):
        """An InnerProduct by oneDNN (the activation a post-op unless a sum comes first) or in row
        blocks, one per thread: everything from the layer's axis on flattened."""
        x = x.flatten(self.head.axis) if self.head.axis < x.dim() - 1 else x
        rows = x.reshape(-1, x.shape[-1])
        if self.algorithm == "blocks":
            y, attr = self._prepared["blocks"](rows), "none"
        else:
            attr, scalars = self.attr if other is None else ("none", [])
            y = torch.ops.mkldnn._linear_pointwise(rows, self.torch_weight, self.bias, attr, scalars, "")
        y = y.reshape(x.shape[:-1] + (-1,))
        if other is not None:
            y = y + other
        return y if self.act is None or attr != "none" else self.act(y)

    def _overhang(self, shape):
        """The F.pad of Caffe's zeros past the end for a window larger than an input of ``shape``, or None."""
        over = self.head.overhang(*shape[2:])
        return (0, over[1], 0, over[0]) if any(over) else None

    def _overhung(self, x):
        extra = self._overhang(x.shape)
        return x if extra is None else F.pad(x, extra)

    def _onednn(self, x, other):
        """oneDNN's convolution, its weights reordered on the first call for each input shape
        (the layout oneDNN picks depends on it); what the call needs is kept with them, so a
        call does little more than oneDNN's own work."""
        shape, weight, args, extra = self._prepared.get("onednn", (None,) * 4)
        if shape != x.shape:
            head = self.head
            args = (list(head.pad), list(head.stride), list(head.dilation), head.group)
            shape, extra = x.shape, self._overhang(x.shape)
            padded = self._overhung(x).shape
            weight = torch.ops.mkldnn._reorder_convolution_weight(self.weight, *args, list(padded))
            self._prepared["onednn"] = shape, weight, args, extra
        if extra is not None:
            x = F.pad(x, extra)
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
        self._watched = Watch(self.sources())

    def layers(self):
        return self.affines

    def pack(self, settings):
        self.watch()
        scale, shift = self.affine()
        self.scale, self.shift = scale.float(), shift.float()

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(view), x, self.scale.view(view))
