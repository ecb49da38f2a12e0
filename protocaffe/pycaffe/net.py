"""pycaffe's Net over a :class:`protocaffe.net.CaffeNet` (``net.module``).

The net runs layer by layer, as Caffe's ForwardFromTo/BackwardFromTo do, so
``forward(start=, end=)`` and ``backward(start=, end=)`` run part of it and
every blob has its data and its diff. Each layer's bottoms enter it as fresh
autograd leaves, so backward through one layer reads its tops' diffs from
the blobs (whatever wrote them: the layer above, the caller, or the loss
weight Caffe puts in a loss top's diff) and writes its bottoms' diffs there.

A precision (``Net(..., precision="bf16")`` or caffe.set_precision) applies
protocaffe.speed's settings: each layer's forward runs under its autocast, and
blobs computed in bf16 or fp16 read as float32 arrays (protocaffe.blob).

A whole-net ``forward()`` of a TEST net in fp32 fed by Input layers takes the deployment
fast path instead (:mod:`protocaffe.deploy`; ``Net.fast = False`` turns it off):
it computes the outputs and the blobs asked for. Every other blob is pending:
reading its data, a backward, a partial forward or a forward with callbacks first
runs the layer-by-layer forward on the inputs the fast one ran on, and a blob read
this way is kept by the fast forwards after. Weights written through
``net.params`` arrays are folded again before the next fast forward.
"""
from collections import OrderedDict

import numpy as np
import torch

from protocaffe.errors import CaffeError
from protocaffe.layer_types.python import Python
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2
from protocaffe.blob import Blob, ParamBlob
from protocaffe.pycaffe.mode import caffe_stream, current_device, current_precision, next_seed
from protocaffe.speed import DEFAULT_PRECISION, Speed

TEST = caffe_pb2.TEST


class LayerView:
    """pycaffe's view of one layer (an item of ``net.layers``): ``type``, ``blobs`` (ParamBlobs), ``reshape``.

    Other attributes are the underlying module's (``layer.weight``, ``layer.param``). A
    ``Python`` layer is not wrapped: ``net.layers[i]`` is the user's layer object itself, as
    in pycaffe (py-faster-rcnn calls its own ``net.layers[0].set_roidb(...)``).
    """

    def __init__(self, net, index, module):
        self._net, self._index, self._module = net, index, module
        self.blobs = [ParamBlob(module, n) for n in module.blob_names]

    @property
    def type(self):
        return self._module.type

    def reshape(self, bottom=None, top=None):
        """Set the top blobs' shapes from the bottom blobs' (Caffe's Layer::Reshape)."""
        self._net._reshape_layer(self._index)

    def __getattr__(self, name):
        return getattr(self._module, name)


def _parse_net_args(args, weights, phase):
    """pycaffe accepts Net(file, phase), Net(file, weights, phase) and keyword forms."""
    for a in args:
        if isinstance(a, int):
            phase = a
        else:
            weights = a
    if phase is None:
        raise CaffeError("Net needs a phase: protocaffe.TRAIN or protocaffe.TEST")
    return weights, phase


def _index(names, name, what):
    try:
        return names.index(name)
    except ValueError:
        raise CaffeError(f"no layer named '{name}' for {what}; layers: {', '.join(names)}") from None


def _snapshot(t):
    """A copy of ``t``; on the CPU a plain memory copy in this thread (torch's clone runs on its
    thread pool, and right after an onnxruntime forward it waited on that engine's spinning
    threads: 2 ms for SqueezeNet's input)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8):
        return torch.from_numpy(t.detach().numpy().copy())
    return t.clone()


class Net:
    """A Caffe net with pycaffe's interface. ``Net(prototxt, [weights], phase, level=0, stages=(),
    precision=None)``; ``precision`` is "fp32", "bf16", "fp16" or "auto", by default
    caffe.set_precision's choice, else fp32."""

    #: whole-net forwards of TEST nets take the deployment fast path (protocaffe.deploy)
    fast = True

    def __init__(self, network_file, *args, weights=None, phase=None, level=None, stages=(), seed=None,
                 precision=None):
        weights, phase = _parse_net_args(args, weights, phase)
        stream = caffe_stream() if seed is None else None  # after set_random_seed: Caffe's draws, in turn
        seed = next_seed() if seed is None else seed
        speed = Speed(precision or current_precision() or DEFAULT_PRECISION, channels_last=False)
        module = build_net(network_file, phase, level=level, stages=stages, weights=weights,
                           seed=seed, device=current_device(), caffe_stream=stream)
        self._attach(speed.prepare(module), speed)

    @classmethod
    def wrap(cls, module, speed=None):
        """A pycaffe Net over an existing CaffeNet (a solver's), sharing its tensors; ``speed``
        the settings ``module`` was prepared with (its forwards run under their autocast)."""
        net = cls.__new__(cls)
        net._attach(module, speed or Speed(DEFAULT_PRECISION))
        return net

    def _attach(self, module, speed):
        self.speed = speed
        self.module = m = module
        m.keep_all_blobs = True
        self.device = m.ctx.device
        self.blobs = OrderedDict((n, Blob(torch.zeros(s, device=self.device))) for n, s in m.blob_shapes.items())
        self._modules = mods = [m.layers[s.key] for s in m.plan]
        self.layers = [mod.impl if isinstance(mod, Python) else LayerView(self, i, mod) for i, mod in enumerate(mods)]
        self._layer_names = [mod.name for mod in mods]
        self.layer_dict = OrderedDict(zip(self._layer_names, self.layers))
        self.params = OrderedDict((n, l.blobs) for n, l in self.layer_dict.items() if l.blobs)
        self.top_names = OrderedDict((n, list(s.tops)) for n, s in zip(self._layer_names, m.plan))
        self.bottom_names = OrderedDict((n, list(s.bottoms)) for n, s in zip(self._layer_names, m.plan))
        self.inputs = list(m.input_names)
        self.outputs = list(m.output_names)
        self.blob_loss_weights = OrderedDict((n, 0.0) for n in self.blobs)
        self.blob_loss_weights.update(m.loss_tops())
        for name, weight in m.loss_tops().items():  # Caffe keeps the loss weight in a loss top's diff
            self.blobs[name].diff[...] = weight
        self._records = {}
        self._hooks = {"before_forward": [], "after_forward": [], "before_backward": [], "after_backward": []}
        # the fast path replays exactly: a TEST net fed by Input layers only, no Python layers
        self._replayable = m.phase == TEST and all(s.is_input for s in m.plan if not s.bottoms) and \
            not any(mod.type == "Python" for mod in mods)
        self._fast_keep, self._fast_inputs = set(), None

    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def _blobs(self):
        return list(self.blobs.values())

    @property
    def _inputs(self):
        return [self._blob_names.index(n) for n in self.inputs]

    @property
    def _outputs(self):
        return [self._blob_names.index(n) for n in self.outputs]

    def _top_ids(self, i):
        return [self._blob_names.index(n) for n in self.module.plan[i].tops]

    def _bottom_ids(self, i):
        return [self._blob_names.index(n) for n in self.module.plan[i].bottoms]

    @property
    def _blob_loss_weights(self):
        return list(self.blob_loss_weights.values())

    # ---- running ------------------------------------------------------------

    def _sync(self):
        for blob in self.blobs.values():
            blob._push()
        for blobs in self.params.values():
            for blob in blobs:
                blob._push()

    def _params_changed(self):
        for blobs in self.params.values():
            for blob in blobs:
                blob._device_changed()

    def _forward(self, start, end, inputs=None):
        """Caffe's ForwardFromTo: run layers start..end (inclusive) on the blobs' current values
        (``inputs``, a replay of a fast forward: tensors read in place of those blobs until a
        layer writes them, and no callbacks)."""
        self._materialize()
        self._sync()
        force = self.module.param.force_backward
        replay, inputs = inputs is not None, dict(inputs or {})
        for i in range(start, end + 1):
            step = self.module.plan[i]
            if step.is_input:
                continue
            bottoms = [self._leaf(inputs.get(b, self.blobs[b]._data), force) for b in step.bottoms]
            if not replay:
                self._call("before_forward", i)
            with self.speed.autocast(self.device):
                out = self._modules[i](*bottoms)
            out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
            self._records[i] = (bottoms, out)
            for name, t in zip(step.tops, out):
                inputs.pop(name, None)
                self._blob(name, t)._set(data=t)
            if not replay:
                self._call("after_forward", i)
        self._params_changed()

    def _fast_path(self, start, end):
        return (self.fast and self._replayable and start is None and end is None
                and not self._hooks["before_forward"] and not self._hooks["after_forward"]
                and not torch.is_autocast_enabled(self.device.type)
                and not self.speed.resolve(self.device).reduced)

    def _forward_fast(self, wanted):
        """The whole forward on the deployment fast path, keeping the outputs, ``wanted`` and the
        blobs read after earlier fast forwards; the other blobs become pending."""
        self._sync()
        for blobs in self.params.values():
            for blob in blobs:
                if blob._may_have_changed():  # the fast path refolds a tensor whose version moved
                    torch.autograd.graph.increment_version(blob._data)
        inputs = {n: self.blobs[n]._data for n in self.inputs}
        out = self.module.deployed(set(wanted) | self._fast_keep)(**inputs)
        self._records = {}
        self._fast_inputs = {n: _snapshot(t) for n, t in inputs.items()}
        for name, blob in self.blobs.items():
            if name in inputs:
                continue
            if name in out:
                blob._set(data=out[name])
            else:
                blob._pending = self._materialize

    def _materialize(self, blob=None):
        """After a fast forward: the layer-by-layer forward on the inputs that one ran on, giving
        every blob its value and backward its records. ``blob``, read, is kept from now on."""
        inputs, self._fast_inputs = self._fast_inputs, None
        if inputs is None:
            return
        for name, b in self.blobs.items():
            b._pending = None
            if b is blob:
                self._fast_keep.add(name)
        self._forward(0, len(self.layers) - 1, inputs)

    def _drop_pending(self):
        """A reshape that changes shapes ends the last fast forward: its pending blobs read as zeros."""
        if self._fast_inputs is None:
            return
        self._fast_inputs = None
        for b in self.blobs.values():
            if b._pending is not None:
                b._pending = None
                b._set(data=torch.zeros_like(b._data))

    def _blob(self, name, tensor):
        if name not in self.blobs:
            self.blobs[name] = Blob(tensor)
        return self.blobs[name]

    @staticmethod
    def _leaf(t, force):
        """A blob's tensor as a new autograd leaf: it needs a gradient when the layer that made it
        did (or force_backward), and only floating tensors can have one."""
        return t.detach().requires_grad_(t.is_floating_point() and (force or t.requires_grad))

    def _backward(self, start, end):
        """Caffe's BackwardFromTo: layers start down to end, each from its tops' diffs in the blobs."""
        self._materialize()
        self._sync()
        written = set()
        for i in range(start, end - 1, -1):
            if i not in self._records:
                continue
            step, (bottoms, tops) = self.module.plan[i], self._records[i]
            if not step.backward:  # Caffe skips layers that feed no loss (without force_backward)
                continue
            down = [b.requires_grad and j not in step.no_backward for j, b in enumerate(bottoms)]
            params = [p for p in self._modules[i].blobs if p.requires_grad]
            pairs = [(t, self.blobs[n]._tensor("diff")) for n, t in zip(step.tops, tops) if t.requires_grad]
            leaves = [b for b, d in zip(bottoms, down) if d] + params
            if not pairs or not leaves:
                continue
            self._call("before_backward", i)
            grads = torch.autograd.grad([t for t, _ in pairs], leaves,
                                        [d.reshape(t.shape) for t, d in pairs],
                                        retain_graph=True, allow_unused=True)
            self._store_diffs(step, bottoms, down, grads, params, written)
            self._call("after_backward", i)
        self._params_changed()

    def _store_diffs(self, step, bottoms, down, grads, params, written):
        """Bottom diffs (where ``down``): set, summed over consumers (Caffe's split layers)."""
        it = iter(grads)
        for name, leaf, wanted in zip(step.bottoms, bottoms, down):
            if not wanted:
                continue
            g = next(it)
            g = torch.zeros_like(leaf) if g is None else g
            blob = self.blobs[name]
            if name in written and name not in step.tops:
                g = blob._tensor("diff") + g
            blob._set(diff=g.detach())
            written.add(name)
        with torch.no_grad():
            for p, g in zip(params, it):
                if g is not None:
                    p.grad = g.detach().clone() if p.grad is None else p.grad.add_(g)

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run layers ``start``..``end`` (names; default all). Keyword arrays fill the input blobs first.

        Returns ``{name: blob.data}`` for the outputs (or ``end``'s tops) and the names in ``blobs``.
        """
        start_i = 0 if start is None else _index(self._layer_names, start, "forward start")
        end_i = len(self.layers) - 1 if end is None else _index(self._layer_names, end, "forward end")
        for name, value in kwargs.items():
            if name not in self.inputs:
                raise CaffeError(f"'{name}' is not an input of this net; inputs: {self.inputs}")
            value = np.asarray(value)
            self.blobs[name].reshape(*value.shape)
            self.blobs[name].data[...] = value
        names = (self.outputs if end is None else self.top_names[end]) + list(blobs or [])
        if self._fast_path(start, end):
            self._forward_fast(names)
        else:
            self._forward(start_i, end_i)
        return {n: self.blobs[n].data for n in names}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Backpropagate layers ``start`` down to ``end`` (default all), from the tops' diffs.

        Keyword arrays are written into those blobs' diffs first. Returns ``{name: blob.diff}``
        for the inputs (or ``end``'s bottoms) and the names in ``diffs``.
        """
        self._materialize()
        if not self._records:
            raise CaffeError("Net.backward() needs a forward() first")
        start_i = len(self.layers) - 1 if start is None else _index(self._layer_names, start, "backward start")
        end_i = 0 if end is None else _index(self._layer_names, end, "backward end")
        for name, value in kwargs.items():
            if name not in self.blobs:
                raise CaffeError(f"'{name}' is not a blob of this net; outputs: {self.outputs}")
            self.blobs[name].diff[...] = np.asarray(value).reshape(self.blobs[name].shape)
        self._backward(start_i, end_i)
        names = (self.inputs if end is None else self.bottom_names[end]) + list(diffs or [])
        return {n: self.blobs[n].diff for n in names}

    def reshape(self):
        """Caffe's Net::Reshape: every layer's tops take the shapes its bottoms now give."""
        for i in range(len(self.layers)):
            self._reshape_layer(i)

    def _reshape_layer(self, i):
        step = self.module.plan[i]
        if step.is_input:
            return
        shapes = self._modules[i].top_shapes([self.blobs[b].shape for b in step.bottoms])
        for name, shape in zip(step.tops, shapes):
            if tuple(shape) != self.blobs[name].shape:
                self._drop_pending()
            self.blobs[name].reshape(*shape)

    def forward_all(self, blobs=None, **kwargs):
        """Forward over arrays longer than the batch, batch by batch; returns whole arrays."""
        outs = {n: [] for n in self.outputs + list(blobs or [])}
        for batch in self._batches(kwargs):
            for name, value in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(value.copy())
        return self._unpad(outs, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward_all and backward batch by batch: inputs and output diffs in ``kwargs``."""
        outs = {n: [] for n in self.outputs + list(blobs or [])}
        grads = {n: [] for n in self.inputs + list(diffs or [])}
        fwd = list(self._batches({n: kwargs[n] for n in self.inputs if n in kwargs}))
        bwd = list(self._batches({n: kwargs[n] for n in self.outputs if n in kwargs}))
        fast, self.fast = self.fast, False  # each backward needs the layer-by-layer forward's records
        try:
            for k in range(max(len(fwd), len(bwd))):
                for name, value in self.forward(blobs=blobs, **(fwd[k] if k < len(fwd) else {})).items():
                    outs[name].extend(value.copy())
                for name, value in self.backward(diffs=diffs, **(bwd[k] if k < len(bwd) else {})).items():
                    grads[name].extend(value.copy())
        finally:
            self.fast = fast
        return self._unpad(outs, kwargs), self._unpad(grads, kwargs)

    def _batches(self, arrays):
        """Split arrays into the net's batch size; the last batch is padded with zeros."""
        if not arrays:
            return
        num = len(next(iter(arrays.values())))
        size = next(iter(self.blobs.values())).shape[0]
        for i in range(0, num, size):
            batch = {}
            for name, a in arrays.items():
                part = np.asarray(a[i:i + size])
                pad = size - len(part)
                batch[name] = np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)]) if pad else part
            yield batch

    @staticmethod
    def _unpad(collected, kwargs):
        n = len(next(iter(kwargs.values()))) if kwargs else None
        return {k: np.asarray(v)[:n] for k, v in collected.items()}

    # ---- the rest of pycaffe's Net --------------------------------------------

    def before_forward(self, callback):
        """Call ``callback(layer_index)`` before each layer's forward (also after_forward,
        before_backward, after_backward)."""
        self._hooks["before_forward"].append(callback)

    def after_forward(self, callback):
        self._hooks["after_forward"].append(callback)

    def before_backward(self, callback):
        self._hooks["before_backward"].append(callback)

    def after_backward(self, callback):
        self._hooks["after_backward"].append(callback)

    def _call(self, kind, i):
        for callback in self._hooks[kind]:
            callback(i)

    def clear_param_diffs(self):
        """Zero every parameter's diff (Caffe's Net::ClearParamDiffs)."""
        for module in self._modules:
            for t in module.blobs:
                if t.grad is not None:
                    t.grad.zero_()
        self._params_changed()

    def set_input_arrays(self, data, labels, layer=None):
        """Feed numpy arrays to the net's MemoryData layer (the first, or the one named)."""
        found = [l for n, l in self.layer_dict.items() if l.type == "MemoryData" and layer in (None, n)]
        if not found:
            raise CaffeError("set_input_arrays needs a MemoryData layer in the net")
        found[0]._module.set_input_arrays(data, labels)

    def save(self, path):
        """Write the weights as a .caffemodel."""
        self._sync()
        self.module.save(path)

    def copy_from(self, path):
        """Load weights by layer name from a .caffemodel."""
        self.module.copy_from(path)
        self._params_changed()

    def share_with(self, other):
        """Use ``other``'s parameter tensors for layers of the same name (pycaffe's share_with)."""
        theirs = other.module.layer_by_name()
        for name, layer in self.module.layer_by_name().items():
            if name in theirs:
                for blob_name in layer.blob_names:
                    setattr(layer, blob_name, getattr(theirs[name], blob_name))
