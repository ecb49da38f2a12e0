"""The deployment fast path: a net's forward folded, fused and prepacked for inference.

    fast = DeployedNet(net, keep=("fc7",))   # a built CaffeNet (TEST phase), its tensors shared
    blobs = fast(data=x)                     # {name: tensor}: outputs, loss tops and ``keep``

What it does to the plan, in one pass over the layers (:func:`fuse`):

- a per-channel affine layer (BatchNorm on global statistics, Scale, Bias: the
  tables of :mod:`protocaffe.folding`) right after a Convolution, Deconvolution or
  InnerProduct is folded into that layer's weights; a run of them elsewhere becomes
  one ``x * scale + shift``;
- an activation (ReLU, TanH, Sigmoid) and an Eltwise SUM of the result with one
  other blob run inside the convolution (oneDNN post-ops);
- a layer is folded into another only where no one else reads the value between
  them and the caller does not observe it: a value counts as observed when it is
  the last one written under a name in ``keep`` (in-place chains such as
  conv -> BatchNorm -> Scale -> ReLU on one blob fold, as Caffe shows that blob
  after the ReLU anyway).

How it runs (:class:`~protocaffe.deploy_settings.Settings`, measured per machine and net):
``channels_last`` stores 4-d activations NHWC; ``prepack`` keeps each 2-d convolution's
weights in oneDNN's blocked layout (``torch.ops.mkldnn``, CPU only) instead of
reordering them at every call. Layers that fold into nothing run as themselves.

The folded weights are copies made from the net's tensors; before each call the
sources are checked (same tensor, same autograd version) and what changed is folded
again, so ``copy_from``, a solver step or ``share_with`` are seen at the next call.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call

from protocaffe import folding, winograd
from protocaffe.deploy_settings import choose, mkldnn_prepacks
from protocaffe.proto import caffe_pb2
from protocaffe.speed import keep_freed_memory

SUM = caffe_pb2.EltwiseParameter.SUM


@dataclass
class Op:
    """One step of the deployed plan: a module (a fused op or the net's own layer) from bottoms to tops."""
    module: object
    bottoms: tuple
    tops: tuple
    source: bool = False
    release: list = field(default_factory=list)


class FusedConv(torch.nn.Module):
    """A Convolution, Deconvolution or InnerProduct (``head``) with the per-channel affine
    layers folded into its weights, then optionally ``+ other`` (an Eltwise SUM's other
    bottom) and an activation layer. ``forward(x[, other])``."""

    def __init__(self, head, affines=(), add=False, act=None):
        super().__init__()
        self.head, self.affines, self.add, self.act = head, list(affines), add, act
        self.name = head.name
        self._stamp = None

    def sources(self):
        """(module, blob name) of every tensor the folded weights are made from."""
        return [(m, n) for m in [self.head] + self.affines for n in m.blob_names]

    def stamp(self):
        """Which tensors, where, at which autograd version: what the packed weights were made from."""
        return [_stamp(getattr(m, n)) for m, n in self.sources()]

    def fold(self):
        """The folded (weight, bias), or the head's own where nothing folds in."""
        head = self.head
        if not self.affines:
            return head.weight.detach(), None if head.bias is None else head.bias.detach()
        scale, shift = folding.channel_affine(self.affines[0])
        for layer in self.affines[1:]:
            scale, shift = folding.compose((scale, shift), folding.channel_affine(layer))
        return folding.ABSORBERS[head.type](head, scale, shift)

    def pack(self, settings):
        """Fold, and get ready to run as ``settings`` say: a 3x3 convolution by Winograd's
        algorithm where they name it, else under ``settings.prepack`` a 2-d convolution on the
        CPU in oneDNN, its weights reordered (on the first call for each input shape: oneDNN's
        layout depends on it), else as the layer computes it."""
        self._stamp = self.stamp()
        self.weight, self.bias = self.fold()
        head = self.head
        block = settings.block(self.name) if winograd.fits(head) else 0
        self.winograd = winograd.Winograd(self.weight, head.pad, block) if block else None
        self.mkldnn = (not block and settings.prepack and head.type == "Convolution" and len(head.kernel) == 2
                       and self.weight.dtype == torch.float32 and mkldnn_prepacks(self.weight.device))
        self.attr = folding.ACTIVATIONS[self.act.type](self.act) if self.act is not None else ("none", [])
        self.packed = None
        if not self.mkldnn and settings.channels_last and self.weight.dim() == 4:
            self.weight = self.weight.contiguous(memory_format=torch.channels_last)

    def stale(self):
        return self._stamp != self.stamp()

    def forward(self, x, other=None):
        if self.mkldnn:
            return self._mkldnn(x, other)
        if self.winograd is not None:
            y = self.winograd(x)
            if self.bias is not None:
                y = y + self.bias.view(1, -1, 1, 1)
        else:
            params = {"weight": self.weight} if self.bias is None else {"weight": self.weight, "bias": self.bias}
            y = functional_call(self.head, params, (x,))
        if other is not None:
            y = y + other
        return y if self.act is None else self.act(y)

    def _mkldnn(self, x, other):
        head = self.head
        extra = head.overhang(*x.shape[2:])  # Caffe's zeros past the end for a window larger than the input
        if any(extra):
            x = F.pad(x, (0, extra[1], 0, extra[0]))
        args = (list(head.pad), list(head.stride), list(head.dilation), head.group)
        if self.packed is None or self.packed[0] != x.shape:
            self.packed = x.shape, torch.ops.mkldnn._reorder_convolution_weight(self.weight, *args, list(x.shape))
        weight, (attr, scalars) = self.packed[1], self.attr
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, *args, attr, scalars, "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, weight, self.bias, *args, "add", None, None if attr == "none" else attr, scalars, "")


class FusedAffine(torch.nn.Module):
    """A run of per-channel affine layers as one ``x * scale + shift`` along axis 1."""

    def __init__(self, affines):
        super().__init__()
        self.affines = list(affines)
        self.name = self.affines[0].name
        self._stamp = None

    def sources(self):
        return [(m, n) for m in self.affines for n in m.blob_names]

    stamp, stale = FusedConv.stamp, FusedConv.stale

    def pack(self, settings):
        self._stamp = self.stamp()
        scale, shift = folding.channel_affine(self.affines[0])
        for layer in self.affines[1:]:
            scale, shift = folding.compose((scale, shift), folding.channel_affine(layer))
        self.scale, self.shift = scale.float(), shift.float()

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(view), x, self.scale.view(view))


def _stamp(t):
    return id(t), t.data_ptr(), t._version


def _readers(plan):
    """{(step index, top): [steps reading that value]} and {name: the last (step, top) written}."""
    current, readers = {}, {}
    for i, step in enumerate(plan):
        for b in step.bottoms:
            readers[current[b]].append(i)
        for t in step.tops:
            current[t] = (i, t)
            readers[(i, t)] = []
    return readers, current


def _single(layer):
    return len(layer.param.bottom) == 1 and len(layer.param.top) == 1


def _sum_of_two(layer):
    return (layer.type == "Eltwise" and len(layer.param.bottom) == 2 and layer.op == SUM
            and all(c == 1 for c in layer.coeff) and layer.param.bottom[0] != layer.param.bottom[1])


class _Chain:
    """Layers fused into one op, grown from a head along single-reader values."""

    def __init__(self, index, head):
        self.members, self.head = [index], head
        self.affines, self.add, self.act = [], None, None

    def takes(self, layer, step, name):
        """Add ``layer`` (reading this chain's value ``name``) if it fits the chain's next slot."""
        absorber = self.head.type in folding.ABSORBERS
        if self.add is None and self.act is None and _single(layer) and \
                folding.channel_affine(layer) is not None:
            if absorber and folding.ABSORBERS[self.head.type](self.head, *folding.channel_affine(layer)) is None:
                return False
            self.affines.append(layer)
            return True
        if not absorber:
            return False
        if self.add is None and self.act is None and _sum_of_two(layer):
            self.add = step.bottoms[1] if step.bottoms[0] == name else step.bottoms[0]
            return True
        if self.act is None and _single(layer) and layer.type in folding.ACTIVATIONS:
            self.act = layer
            return True
        return False

    def module(self):
        if self.head.type in folding.ABSORBERS:
            return FusedConv(self.head, self.affines, self.add is not None, self.act)
        return FusedAffine([self.head] + self.affines)


def fuse(net, keep):
    """The deployed plan of ``net``: fused ops and the net's other layers, in an order that
    computes the same values; every name in ``keep`` keeps its last value."""
    plan, layers = net.plan, net.layers
    readers, last = _readers(plan)
    observed = {last[n] for n in keep if n in last}
    taken, placed = set(), {}
    for i, step in enumerate(plan):
        if i in taken:
            continue
        head = layers[step.key]
        if not (_single(head) and (head.type in folding.ABSORBERS or folding.channel_affine(head) is not None)):
            placed[i] = Op(head, step.bottoms, step.tops, source=not step.bottoms)
            continue
        chain, value = _Chain(i, head), (i, step.tops[0])
        while value not in observed and len(readers[value]) == 1:
            j = readers[value][0]
            if j in taken or _rewritten(plan, step.bottoms, chain.members[-1], j) or \
                    not chain.takes(layers[plan[j].key], plan[j], value[1]):
                break
            chain.members.append(j)
            value = (j, plan[j].tops[0])
        taken.update(chain.members)
        bottoms = step.bottoms + ((chain.add,) if chain.add is not None else ())
        placed[chain.members[-1]] = Op(chain.module(), bottoms, (value[1],))
    ops = [placed[i] for i in sorted(placed)]
    _mark_releases(ops, keep)
    return ops


def _rewritten(plan, names, start, end):
    """Whether a step strictly between ``start`` and ``end`` writes one of ``names`` (a fused op
    runs at its last member's place and must still read its head's bottoms there)."""
    return any(set(plan[k].tops) & set(names) for k in range(start + 1, end))


def _mark_releases(ops, keep):
    """Each op drops the blobs no later op reads and the caller does not keep."""
    last = {}
    for i, op in enumerate(ops):
        for name in op.bottoms + op.tops:
            last[name] = i
    for name, i in last.items():
        if name not in keep:
            ops[i].release.append(name)


class DeployedNet:
    """A built net's forward for inference: ``fast(**inputs)`` -> {name: tensor} for the net's
    outputs, its loss tops and ``keep``. Shares the net's tensors; no autograd."""

    def __init__(self, net, keep=(), settings=None):
        if net.ctx.device.type == "cpu":
            keep_freed_memory()  # activations are allocated afresh at every call: no page faults
        self.net = net
        self.keep = set(keep) | set(net.output_names) | set(net.loss_tops())
        self.ops = fuse(net, self.keep)
        self.settings = settings
        self._packed = None

    @property
    def fused(self):
        return [op.module for op in self.ops if isinstance(op.module, (FusedConv, FusedAffine))]

    def __call__(self, **inputs):
        return self.run(inputs)

    @torch.no_grad()
    def run(self, inputs):
        blobs = self.sources(inputs)
        if self.settings is None:
            self.settings = choose(self, blobs)
        return self.body(blobs)

    def sources(self, inputs):
        """The blobs of the layers without bottoms: the caller's inputs, or the layer run (a Data layer)."""
        blobs = {}
        for op in self.ops:
            if op.source:
                given = all(t in inputs for t in op.tops)
                out = tuple(inputs[t] for t in op.tops) if given else op.module()
                blobs.update(zip(op.tops, (out,) if isinstance(out, torch.Tensor) else out))
        return blobs

    @torch.no_grad()
    def body(self, blobs, settings=None, record=None):
        """Every op but the sources, from ``blobs``; returns the kept blobs (dense NCHW). With a
        dict ``record``, the bottoms each FusedConv reads are stored there under it."""
        settings = settings or self.settings
        self.refresh(settings)
        blobs = {n: self._layout(t, settings) for n, t in blobs.items()}
        for op in self.ops:
            if not op.source:
                bottoms = [blobs[b] for b in op.bottoms]
                if record is not None and isinstance(op.module, FusedConv):
                    record[op.module] = bottoms
                out = op.module(*bottoms)
                blobs.update(zip(op.tops, (out,) if isinstance(out, torch.Tensor) else out))
            for name in op.release:
                del blobs[name]
        return {n: t.contiguous() for n, t in blobs.items()}

    @staticmethod
    def _layout(t, settings):
        if settings.channels_last and t.dim() == 4 and t.is_floating_point():
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def refresh(self, settings):
        """(Re)pack the fused ops for ``settings``, or those whose source tensors changed."""
        again = self._packed != settings
        for module in self.fused:
            if again or module.stale():
                module.pack(settings)
        self._packed = settings
