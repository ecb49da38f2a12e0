"""From a prototxt net to a running ``torch.nn.Module``, in visible steps.

    param = read_net_param(path)            # parse the text (forks' fields by name), name the fork's
                                            # dialect and convert its meanings, upgrade V0/V1
    param = filter_net(param, state)        # keep the layers whose include/exclude rules match
    net   = CaffeNet(param)                 # infer shapes and build one module per layer
    blobs = net(data=x)                     # run the plan; every blob by name
    loss  = net.loss(blobs)                 # sum of loss_weight * top over loss tops

``CaffeNet`` is a plain ``nn.Module``: it takes and returns tensors and works
with autograd, AMP and ``torch.compile``. The pycaffe-shaped API on top of it
lives in :mod:`protocaffe.pycaffe`.
"""
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from protocaffe import caffe_random, dialects, fileio, netlog, plugins
from protocaffe.errors import CaffeError
from protocaffe.data import dense, hdf5, layers as data_layers, window  # noqa: F401 (registers the data layer types)
from protocaffe.data.annotated import layer as annotated_layer  # noqa: F401 (registers AnnotatedData)
from protocaffe.layer_types import BuildContext, layer_class
from protocaffe.log import LOGGER as log
from protocaffe.memory import Budget
from protocaffe.proto import caffe_pb2
from protocaffe.upgrade import upgrade_net


# ---- 1. parse and upgrade ----------------------------------------------------

def read_net_param(path):
    """Read a net prototxt and bring it to the current format, as Caffe's ReadNetParamsFromTextFileOrDie;
    a fork's file is recognised and named in the log (protocaffe.dialects)."""
    plugins.load()
    param = fileio.read_text(path, caffe_pb2.NetParameter)
    return upgrade_net(dialects.recognise(param, os.fspath(path)), os.fspath(path))


def read_weights_param(path, dialect=None):
    """Read a binary .caffemodel (any version) and upgrade it, as ReadNetParamsFromBinaryFileOrDie;
    ``dialect`` names the fork whose colliding field numbers the file uses, if any."""
    plugins.load()
    return upgrade_net(dialects.read_binary(path, caffe_pb2.NetParameter, dialect), os.fspath(path))


# ---- 2. filter by NetState ---------------------------------------------------

def state_meets_rule(state, rule, layer_name):
    """Caffe's StateMeetsRule: phase, min/max level, required stages and forbidden stages,
    checked in that order; the first that fails is logged in Caffe's words (its wording
    for min_level too)."""
    def fails(why):
        log.info("%s specified by a rule in layer %s", why, layer_name)
        return False
    if rule.HasField("phase") and rule.phase != state.phase:
        return fails(f"The NetState phase ({state.phase}) differed from the phase ({rule.phase})")
    if rule.HasField("min_level") and state.level < rule.min_level:
        return fails(f"The NetState level ({state.level}) is above the min_level ({rule.min_level})")
    if rule.HasField("max_level") and state.level > rule.max_level:
        return fails(f"The NetState level ({state.level}) is above the max_level ({rule.max_level})")
    stages = set(state.stage)
    for stage in rule.stage:
        if stage not in stages:
            return fails(f"The NetState did not contain stage '{stage}'")
    for stage in rule.not_stage:
        if stage in stages:
            return fails(f"The NetState contained a not_stage '{stage}'")
    return True


def layer_included(layer, state):
    """A layer with include rules needs one that matches; otherwise no exclude rule may match
    (both checked in order up to the first that decides, as Caffe's FilterNet)."""
    if len(layer.include) and len(layer.exclude):
        raise CaffeError(f"layer '{layer.name}': specify either include rules or exclude rules, not both")
    if len(layer.include):
        return any(state_meets_rule(state, r, layer.name) for r in layer.include)
    return not any(state_meets_rule(state, r, layer.name) for r in layer.exclude)


def net_state(param, phase=None, level=None, stages=()):
    """The NetState a net runs in: the prototxt's ``state`` overridden by the caller's settings."""
    state = caffe_pb2.NetState()
    state.CopyFrom(param.state)
    if phase is not None:
        state.phase = phase
    if level is not None:
        state.level = level
    state.stage.extend(s for s in stages if s not in state.stage)
    return state


def filter_net(param, state):
    """A copy of ``param`` holding only the layers this ``state`` includes, each tagged with the phase."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    out.state.CopyFrom(state)
    for layer in param.layer:
        if layer_included(layer, state):
            kept = out.layer.add()
            kept.CopyFrom(layer)
            kept.phase = state.phase
    return out


# ---- 3. build ----------------------------------------------------------------

@dataclass
class Step:
    """One layer of the plan: module key, bottom and top blob names, loss weight per top, and
    the bottoms (by index) that get no gradient from this layer (``propagate_down: false``),
    and whether the layer runs backward at all (Caffe's layer_need_backward)."""
    key: str
    bottoms: tuple
    tops: tuple
    loss_weights: tuple
    is_input: bool
    no_backward: tuple = ()
    backward: bool = True


@dataclass
class LearnableParam:
    """A parameter the solver updates, in Caffe's learnable_params order."""
    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float
    layer: str
    index: int


def _module_key(name, taken):
    key = name.replace(".", "_") or "layer"
    base, n = key, 1
    while key in taken:
        key, n = f"{base}_{n}", n + 1
    return key


def _loss_weights(layer_param, cls):
    n = len(layer_param.top)
    weights = list(layer_param.loss_weight)
    if not weights:
        return tuple([1.0 if cls.is_loss and i == 0 else 0.0 for i in range(n)])
    if len(weights) != n:
        raise CaffeError(f"layer '{layer_param.name}': loss_weight must be given once per top "
                         f"({n}), found {len(weights)}")
    return tuple(weights)


def _no_backward(layer_param, force_backward):
    """Bottom indices with ``propagate_down: false``; none under the net's ``force_backward``,
    which overrides propagate_down in Caffe (label bottoms get no gradient either way)."""
    flags = list(layer_param.propagate_down)
    if flags and len(flags) != len(layer_param.bottom):
        raise CaffeError(f"layer '{layer_param.name}': propagate_down must be given once per bottom "
                         f"({len(layer_param.bottom)}) or not at all, found {len(flags)}")
    return () if force_backward else tuple(i for i, down in enumerate(flags) if not down)


def _mark_backward(plan, force_backward):
    """Caffe's rule: without ``force_backward`` a layer runs backward only when one of its tops
    is a loss or feeds (by blob name) a layer that does; walked from the last layer back."""
    under_loss = set()
    for step in reversed(plan):
        step.backward = force_backward or any(w or t in under_loss
                                              for t, w in zip(step.tops, step.loss_weights))
        if step.backward:
            under_loss.update(step.bottoms)


def _in_place(lp, i):
    """Whether top ``i`` of a layer is computed in place: it names bottom ``i`` (Caffe's rule)."""
    return i < len(lp.bottom) and lp.bottom[i] == lp.top[i]


def _check_top_names(lp, producers):
    """Caffe's AppendTop: top i may repeat a blob's name only in place (top i is bottom i);
    a name that an earlier top already made (or this layer's own) is an error."""
    for i, top in enumerate(lp.top):
        if _in_place(lp, i):
            continue
        if top in producers:
            raise CaffeError(f"layer '{lp.name}' (type {lp.type}): top blob '{top}' produced by "
                             f"multiple sources (layer '{producers[top]}' made it already); only an "
                             f"in-place top (top {i} named as bottom {i}) may write a blob again")
        producers[top] = lp.name


def _claim_memory(layer, lp, tops, budget):
    """Caffe's Blob::Reshape refuses a negative dimension; the new tops (those not in place)
    are claimed from the net's memory budget before anything of theirs is allocated."""
    for name, shape in zip(lp.top, tops):
        if any(d < 0 for d in shape):
            raise layer.error(f"top '{name}' would have shape {shape}: a dimension is negative")
    new = [i for i in range(len(tops)) if not _in_place(lp, i)]
    if new:
        shown = ", ".join(f"'{lp.top[i]}' ({'x'.join(map(str, tops[i]))})" for i in new)
        budget.claim(layer, f"top{'s' * (len(new) > 1)} {shown}", sum(math.prod(tops[i]) for i in new))


def _shapes_match(a, b, mode):
    if mode == caffe_pb2.ParamSpec.PERMISSIVE:
        return a.numel() == b.numel()
    return tuple(a.shape) == tuple(b.shape)


class CaffeNet(nn.Module):
    """A filtered NetParameter as a module: one submodule per layer, run in prototxt order.

    ``forward(**inputs)`` takes tensors for the Input tops (or for the tops of any layer
    without bottoms, such as a Data layer, which is then skipped) and returns a dict of
    every blob by name (in-place layers rebind their blob's name to the new
    tensor). ``loss(blobs)`` gives Caffe's total loss.
    """

    def __init__(self, param, *, seed=None, device=None, caffe_stream=None):
        super().__init__()
        self.param = param
        self.phase = param.state.phase
        generator = torch.Generator()
        if seed is not None and seed >= 0:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
        if caffe_stream is None and seed is not None and seed >= 0:
            caffe_stream = caffe_random.Stream(int(seed))
        device = torch.device(device or "cpu")
        self.ctx = BuildContext(phase=self.phase, generator=generator, device=device,
                                caffe_stream=caffe_stream, memory=Budget(device))
        self.layers = nn.ModuleDict()
        self.plan = []
        self.blob_shapes = {}
        self.input_names = []
        self.learnable = []
        plugins.load()
        self._build()
        _mark_backward(self.plan, self.param.force_backward)
        self.output_names = self._outputs()
        self.keep_all_blobs = True
        self._release = self._last_uses()
        netlog.log_net(self)

    def _build(self):
        shapes = self.blob_shapes
        owners = {}  # ParamSpec name -> (layer, blob name, layer name)
        producers = {}  # blob name -> the layer that made it
        for lp in self.param.layer:
            cls = layer_class(lp)
            for b in lp.bottom:
                if b not in shapes:
                    raise CaffeError(f"layer '{lp.name}' (type {lp.type}): unknown bottom blob '{b}'; "
                                     f"blobs so far: {', '.join(shapes) or 'none'}")
            _check_top_names(lp, producers)
            bottom_shapes = [shapes[b] for b in lp.bottom]
            layer = cls(lp, bottom_shapes, self.ctx)
            if self.ctx.caffe_stream is not None and not layer.replays_caffe_draws:
                self.ctx.caffe_stream.lost = True
            tops = [tuple(int(d) for d in shape) for shape in layer.top_shapes(bottom_shapes)]
            _claim_memory(layer, lp, tops, self.ctx.memory)
            shapes.update(zip(lp.top, tops))
            key = _module_key(lp.name, self.layers)
            self.layers[key] = layer
            is_input = lp.type == "Input"
            if is_input:
                self.input_names.extend(lp.top)
            self.plan.append(Step(key, tuple(lp.bottom), tuple(lp.top), _loss_weights(lp, cls), is_input,
                                  _no_backward(lp, self.param.force_backward)))
            self._register_params(layer, lp, owners)

    def _register_params(self, layer, lp, owners):
        """Apply ParamSpecs: share named params with their first owner, keep lr/decay mults."""
        specs = list(lp.param)
        if len(specs) > len(layer.blob_names):
            raise CaffeError(f"layer '{lp.name}': {len(specs)} param specs given for "
                             f"{len(layer.blob_names)} parameter blobs")
        for i, name in enumerate(layer.blob_names):
            spec = specs[i] if i < len(specs) else caffe_pb2.ParamSpec()
            tensor = getattr(layer, name)
            if spec.name and spec.name in owners:
                owner, owner_blob, owner_layer = owners[spec.name]
                shared = getattr(owner, owner_blob)
                if not _shapes_match(shared, tensor, spec.share_mode):
                    raise CaffeError(f"layer '{lp.name}': shared parameter '{spec.name}' has shape "
                                     f"{tuple(tensor.shape)} here but {tuple(shared.shape)} in "
                                     f"layer '{owner_layer}'")
                if tuple(shared.shape) != tuple(tensor.shape):
                    raise CaffeError(f"layer '{lp.name}': PERMISSIVE sharing of '{spec.name}' between "
                                     f"shapes {tuple(tensor.shape)} and {tuple(shared.shape)} is not supported")
                setattr(layer, name, shared)
                continue
            if spec.name:
                owners[spec.name] = (layer, name, lp.name)
            # statistics kept as buffers (BatchNorm) get lr_mult 0, as Caffe forces for them
            lr_mult = spec.lr_mult if isinstance(tensor, nn.Parameter) else 0.0
            if isinstance(tensor, nn.Parameter) and lr_mult == 0:
                tensor.requires_grad_(False)
            self.learnable.append(LearnableParam(tensor, lr_mult, spec.decay_mult, lp.name, i))

    def _outputs(self):
        """Blobs produced and not consumed afterwards, sorted by name as Caffe's std::set orders them."""
        available = set()
        for step in self.plan:
            available.difference_update(step.bottoms)
            available.update(step.tops)
        return sorted(available)

    def _apply(self, fn, *args, **kwargs):
        """Keep ``ctx.device`` in step with ``.to(device)``, so layers make new tensors there."""
        out = super()._apply(fn, *args, **kwargs)
        self.ctx.device = fn(torch.zeros(())).device
        return out

    def _last_uses(self):
        """For each step, the blobs no later step reads and that are neither outputs nor loss
        tops: a lean forward (``keep_all_blobs = False``) drops them there, freeing memory early."""
        keep = set(self.output_names) | set(self.loss_tops())
        last = {}
        for i, step in enumerate(self.plan):
            for name in step.bottoms:
                last[name] = i
            for name in step.tops:
                last.setdefault(name, i)
        release = [[] for _ in self.plan]
        for name, i in last.items():
            if name not in keep:
                release[i].append(name)
        return release

    # ---- running ------------------------------------------------------------

    def forward(self, **inputs):
        return self.run(inputs)[0]

    def run(self, inputs, first=None):
        """Run the plan; returns the blobs. If ``first`` is a dict, it receives the first
        tensor produced under each name (the one an in-place layer's backward writes the diff of)."""
        blobs = {}
        for i, step in enumerate(self.plan):
            layer = self.layers[step.key]
            if not step.bottoms and all(t in inputs for t in step.tops):
                out = tuple(inputs[t] for t in step.tops)
            else:
                out = self._run_step(step, layer, [blobs[b] for b in step.bottoms])
            if isinstance(out, torch.Tensor):
                out = (out,)
            blobs.update(zip(step.tops, out))
            if first is not None:
                for name, t in zip(step.tops, out):
                    first.setdefault(name, t)
            if not self.keep_all_blobs:
                for name in self._release[i]:
                    blobs.pop(name, None)
        return blobs, first

    @staticmethod
    def _run_step(step, layer, bottoms):
        """One layer; no gradient into its ``propagate_down: false`` bottoms, and none through a
        layer that needs no backward: its tops are cut from the graph (a diff set on them stays
        there), keeping whether they require grad."""
        out = layer(*[b.detach() if i in step.no_backward else b for i, b in enumerate(bottoms)])
        if step.backward:
            return out
        out = (out,) if isinstance(out, torch.Tensor) else out
        return tuple(t.detach().requires_grad_(t.requires_grad) for t in out)

    def loss(self, blobs):
        """Caffe's net loss: the sum over tops of loss_weight * sum(top)."""
        total = None
        for step in self.plan:
            for top, w in zip(step.tops, step.loss_weights):
                if w:
                    term = w * blobs[top].sum()
                    total = term if total is None else total + term
        if total is None:
            total = torch.zeros((), device=self.ctx.device)
        return total

    def loss_tops(self):
        """{top name: loss weight} for every top that contributes to the loss."""
        return {t: w for s in self.plan for t, w in zip(s.tops, s.loss_weights) if w}

    # ---- weights ------------------------------------------------------------

    def layer_by_name(self):
        """{Caffe layer name: Layer} in prototxt order."""
        return {self.layers[s.key].name: self.layers[s.key] for s in self.plan}

    def copy_from(self, path):
        """Load weights from a .caffemodel (any version) by layer name, as Caffe's CopyTrainedLayersFrom.

        Source layers not in this net are ignored; a layer present in both must
        have the same number of blobs and, blob by blob, the same shape (legacy
        num/channels/height/width dims compare as Caffe's legacy 4-d shape).
        """
        self.copy_from_param(read_weights_param(path), os.fspath(path))

    def copy_from_param(self, source, where="<weights>"):
        by_name = self.layer_by_name()
        netlog.log_ignored(source, by_name)
        for src in source.layer:
            layer = by_name.get(src.name)
            if layer is None or not len(src.blobs):
                continue
            targets = layer.blobs
            if len(src.blobs) != len(targets):
                raise CaffeError(f"{where}: layer '{src.name}' has {len(src.blobs)} blobs in the weights "
                                 f"but {len(targets)} in the net")
            for i, (blob, target) in enumerate(zip(src.blobs, targets)):
                data = fileio.blob_to_array(blob)
                if not _blob_fits(blob, tuple(target.shape)):
                    raise CaffeError(
                        f"{where}: cannot copy param {i} weights from layer '{src.name}'; shape mismatch. "
                        f"Source param shape is {'x'.join(map(str, fileio.blob_shape(blob)))}; "
                        f"target param shape is {'x'.join(map(str, target.shape))}")
                with torch.no_grad():
                    target.copy_(torch.from_numpy(data.reshape(tuple(target.shape))))

    def to_proto(self, *, write_diff=False):
        """The net as a NetParameter with every layer's blobs, as Caffe's Net::ToProto."""
        out = caffe_pb2.NetParameter()
        out.CopyFrom(self.param)
        del out.layer[:]
        for step in self.plan:
            layer = self.layers[step.key]
            lp = out.layer.add()
            lp.CopyFrom(layer.param)
            del lp.blobs[:]
            for t in layer.blobs:
                grad = t.grad if write_diff and t.grad is not None else None
                fileio.array_to_blob(t.detach().cpu().numpy(),
                                 None if grad is None else grad.detach().cpu().numpy(),
                                 blob=lp.blobs.add())
        return out

    def save(self, path, *, write_diff=False):
        """Write a .caffemodel that Caffe loads."""
        fileio.write_binary(self.to_proto(write_diff=write_diff), path)


def _blob_fits(blob, target_shape):
    """Caffe's ShapeEquals: legacy dims compare as the target's 4-d legacy shape."""
    if not fileio.is_legacy_blob(blob):
        return fileio.blob_shape(blob) == target_shape
    if len(target_shape) > 4:
        return False
    legacy = (1,) * (4 - len(target_shape)) + target_shape
    return (blob.num, blob.channels, blob.height, blob.width) == legacy


def build_net(path_or_param, phase=caffe_pb2.TEST, *, level=None, stages=(), weights=None,
              seed=None, device=None, caffe_stream=None):
    """parse, upgrade, filter, build and (optionally) load weights: the whole pipeline in one call."""
    param = (read_net_param(path_or_param) if isinstance(path_or_param, (str, os.PathLike))
             else path_or_param)
    param = filter_net(param, net_state(param, phase, level, stages))
    net = CaffeNet(param, seed=seed, device=device, caffe_stream=caffe_stream)
    if weights:
        for w in str(weights).split(","):
            net.copy_from(w)
    if device is not None:
        net.to(device)
    return net
