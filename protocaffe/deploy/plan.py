"""The deployed plan: one pass over a built net's layers that folds and fuses, and the
object that runs it (:class:`DeployedNet`).

The pass (:func:`fuse`) grows a chain from each Convolution, Deconvolution or InnerProduct
(or from a per-channel affine layer) along values that exactly one later layer reads:

- per-channel affine layers (:mod:`protocaffe.deploy.folding`) fold into the head's
  weights; a run of them without such a head becomes one ``x * scale + shift``;
- then an Eltwise SUM with one other blob, then an activation, run inside the op;
- a value the caller observes ends the chain: the last one written under a name in
  ``keep`` (in-place chains such as conv -> BatchNorm -> Scale -> ReLU on one blob fold
  whole, as Caffe shows that blob after the ReLU anyway).

A chain runs where its last layer stood, so every layer in between still finds its
bottoms; a chain stops before a layer that would have to read a head's bottom after
someone rewrote it.
"""
from dataclasses import dataclass, field, replace

import torch

from protocaffe.deploy import folding, onnxrt
from protocaffe.deploy.ops import FusedAffine, FusedConv
from protocaffe.deploy.settings import choose
from protocaffe.proto import caffe_pb2
from protocaffe.speed import keep_freed_memory, release_freed_memory

SUM = caffe_pb2.EltwiseParameter.SUM


@dataclass
class Op:
    """One step of the deployed plan: a module (a fused op or the net's own layer) from bottoms to tops."""
    module: object
    bottoms: tuple
    tops: tuple
    source: bool = False
    release: list = field(default_factory=list)

    def __post_init__(self):
        # a fused op's forward called directly: it has no hooks, and nn.Module's call costs as much as a small op
        self.call = self.module.forward if isinstance(self.module, (FusedConv, FusedAffine)) else self.module


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
        self._fused = [op.module for op in self.ops if isinstance(op.module, (FusedConv, FusedAffine))]
        self.settings = settings
        self._packed = None
        self._ort = None

    @property
    def fused(self):
        return self._fused

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
        if settings.engine == "onnxruntime" and record is None:
            if onnxrt.fits(self.net, blobs):
                return self._onnxruntime(blobs)
            settings = replace(settings, engine="torch")  # other shapes than the net's: the torch plan
        self.refresh(settings)
        blobs = {n: self._layout(t, settings) for n, t in blobs.items()}
        for op in self.ops:
            if not op.source:
                bottoms = [blobs[b] for b in op.bottoms]
                if record is not None and isinstance(op.module, FusedConv):
                    record[op.module] = bottoms
                out = op.call(*bottoms)
                blobs.update(zip(op.tops, (out,) if isinstance(out, torch.Tensor) else out))
            for name in op.release:
                del blobs[name]
        return {n: t.contiguous() for n, t in blobs.items()}

    def _onnxruntime(self, blobs):
        """The kept blobs by onnxruntime (the net exported on the first call, and again when a
        parameter changed); the inputs kept as given."""
        if self._ort is None:
            made = {t for op in self.ops if not op.source for t in op.tops}
            self._ort = onnxrt.OrtEngine(self.net, self.keep & made, torch.get_num_threads())
        out = self._ort.run(blobs)
        out.update((n, t) for n, t in blobs.items() if n in self.keep)
        return out

    def drop_onnxruntime(self):
        """Let go of the onnxruntime session (and its copy of the weights), and hand the memory back."""
        if self._ort is not None:
            self._ort = None
            release_freed_memory()

    @staticmethod
    def _layout(t, settings):
        if settings.channels_last and t.dim() == 4 and t.is_floating_point():
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def refresh(self, settings, force=False):
        """(Re)pack the fused ops for ``settings`` (all of them with ``force``: after ops were packed
        one by one), or those whose source tensors changed."""
        again = force or self._packed != settings
        for module in self.fused:
            if again or module.stale():
                module.pack(settings)
        self._packed = settings
