"""Caffe's ``type: "Python"`` layer: a class written for pycaffe, run unchanged.

``python_param { module: "pyloss" layer: "EuclideanLossLayer" param_str: "..." }``
imports ``module`` from ``sys.path`` (which holds ``PYTHONPATH``) and builds
``layer(layer_parameter)``, a subclass of pycaffe's ``caffe.Layer``
(:class:`protocaffe.pycaffe.layer.Layer`, exported as ``protocaffe.Layer``). Then, as Caffe does: ``param_str``
and ``phase`` are set, ``setup(bottom, top)`` runs once, and ``reshape(bottom, top)``
before every ``forward(bottom, top)``; ``backward(top, propagate_down, bottom)``
writes the bottoms' diffs. Blobs are :class:`protocaffe.blob.Blob` on the CPU
(``.data``/``.diff`` numpy arrays writable in place, ``.reshape(*shape)``, ``.num``,
``.channels``, ``.height``, ``.width``, ``.count``, ``.shape``).

Learnable blobs: ``self.blobs`` is pycaffe's BlobVec; ``self.blobs.add_blob(*shape)`` in
``setup`` appends a zero-filled blob, which becomes the layer's parameter ``blob<i>`` in
Caffe's ``blobs`` order (so ``param { lr_mult decay_mult }``, sharing by name, the solver,
``net.params`` and .caffemodel files treat it as any layer's). Its ``.data`` is the
parameter (a view on the CPU; a synced host copy on a device, written back after each
call). In ``backward`` its ``.diff`` starts at zero and what the user writes there is
added to the parameter's gradient, so ``diff[...] = g`` and ``diff[...] += g`` both
accumulate as Caffe's own layers do (Caffe's ``=`` would overwrite a diff accumulated
by ``iter_size`` or a shared parameter; here it cannot).

Top shapes are found as Caffe finds them, by running setup and reshape at build time,
here on zero-filled bottoms. Gradients flow through autograd around the user's
backward. A Python layer has no default loss weight: a loss top needs ``loss_weight``.
``share_in_parallel`` (deprecated in Caffe) is read and ignored.

A module that does ``import caffe`` gets protocaffe when no real pycaffe is
importable; a real pycaffe is never shadowed.

A net from a stranger runs the stranger's code through its Python layers: the file each
imports is logged before it runs, and ``PROTOCAFFE_NO_PYTHON_LAYERS=1`` (the command line's
``--no_python_layers``) refuses every Python layer before anything is imported.
"""
import importlib
import importlib.abc
import importlib.util
import os
import sys

import torch

from protocaffe.blob import Blob, ParamBlob
from protocaffe.layer_types import base
from protocaffe.log import LOGGER as log

NO_PYTHON_LAYERS = "PROTOCAFFE_NO_PYTHON_LAYERS"
"""The environment switch that refuses Python layers (any value but '', 0, false or no)."""


def python_layers_refused():
    return os.environ.get(NO_PYTHON_LAYERS, "").strip().lower() not in ("", "0", "false", "no")


class Phase(int):
    """A net's phase as pycaffe layers see ``self.phase``: the int (TRAIN 0, TEST 1) that
    py-R-FCN compares (``self.phase == 0``), whose str() is the name py-faster-rcnn reads
    (``cfg[str(self.phase)]``), as Boost.Python's enum gives it."""

    def __str__(self):
        return "TRAIN" if self == 0 else "TEST"

    __repr__ = __str__


class PythonLayerError(RuntimeError):
    """An exception raised by a user's Python layer code, re-raised naming the layer and
    module; the user's own exception is its ``__cause__``, traceback intact."""


class BlobVec(list):
    """pycaffe's ``self.blobs`` of a Python layer: a list of blobs with ``add_blob(*shape)``."""

    def __init__(self, layer):
        super().__init__()
        self._layer = layer

    def add_blob(self, *shape):
        """Append a zero-filled learnable blob of ``shape`` (call it in ``setup``)."""
        self.append(self._layer.new_blob(shape))


class LayerBlob(ParamBlob):
    """One of a Python layer's ``self.blobs``: ``.data`` is the parameter; ``.diff`` is its
    gradient, except in backward, where it is ``grad``, a zeroed tensor handed to autograd afterwards."""

    def __init__(self, layer, name):
        super().__init__(layer, name)
        self.grad = None

    @property
    def _diff(self):
        return ParamBlob._diff.fget(self) if self.grad is None else self.grad

    def _existing(self):
        written = self._host["diff"].head == "host"  # else no diff is made just to be pushed
        return (("data", self._data), ("diff", self._diff if written else None))


class _CaffeAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import caffe`` (and ``caffe.proto``, ``caffe.io``, ...) give protocaffe's modules.

    Installed only when ``importlib.util.find_spec("caffe")`` finds nothing, and even then
    ``caffe`` goes to any other finder that can find it (a pycaffe installed later);
    submodules are aliased only while ``caffe`` is protocaffe.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "caffe":
            real = any(f.find_spec(fullname, None) for f in sys.meta_path
                       if f is not self and hasattr(f, "find_spec"))
            return None if real else importlib.util.spec_from_loader(fullname, self)
        if fullname.startswith("caffe.") and sys.modules.get("caffe") is sys.modules["protocaffe"]:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module("protocaffe" + spec.name[len("caffe"):])

    def exec_module(self, module):
        """The protocaffe module is already executed."""


def _alias_caffe():
    if any(isinstance(f, _CaffeAlias) for f in sys.meta_path):
        return
    if "caffe" not in sys.modules and importlib.util.find_spec("caffe") is None:
        sys.meta_path.insert(0, _CaffeAlias())


def _blob(tensor):
    return Blob(tensor.detach().cpu().contiguous())


def _retyped(blob, dtype):
    """``blob`` with data of ``dtype`` (the bottoms'), so float64 nets compute in float64."""
    data = torch.from_numpy(blob.data)
    return blob if data.dtype == dtype else _blob(data.to(dtype))


@base.register
class Python(base.Layer):
    """A user's pycaffe layer class; any number of bottoms and tops, shapes set by its reshape."""
    type = "Python"
    num_bottoms = (0, None)
    num_tops = (0, None)

    def setup(self, bottom_shapes):
        p = self.param.python_param
        self.where = f"layer '{self.name}' (type Python, module '{p.module}', class '{p.layer}')"
        cls = getattr(self._import(p.module), p.layer, None)
        if cls is None:
            raise self.error(f"module '{p.module}' has no class '{p.layer}' (python_param.layer)")
        self.layer_blobs = BlobVec(self)
        self.impl = self.call("__init__", cls, self.param)
        self.impl.param_str = self.impl.param_str_ = p.param_str
        self.impl.blobs = self.layer_blobs
        self.impl.phase = Phase(self.phase)
        self.tops = [_blob(torch.zeros(0)) for _ in self.param.top]
        self.call("setup", self.impl.setup, self._zeros(bottom_shapes), self.tops)

    def _import(self, module):
        if python_layers_refused():
            raise self.error(f"refused: it would import python_param.module '{module}', and Python layers "
                             f"are turned off (--no_python_layers, or {NO_PYTHON_LAYERS}=1)")
        if not module:
            raise self.error("python_param.module is not set")
        _alias_caffe()
        try:
            spec = importlib.util.find_spec(module)
            if spec is None:
                raise ModuleNotFoundError(f"No module named '{module}'", name=module)
            log.info("Layer '%s' (type Python) imports module '%s' from %s", self.name, module, spec.origin)
            return importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and (module + ".").startswith(e.name + "."):
                raise self.error(f"cannot import python_param.module '{module}': not found on "
                                 f"sys.path or PYTHONPATH") from e
            raise self.user_error("import", e) from e
        except Exception as e:
            raise self.user_error("import", e) from e

    def new_blob(self, shape):
        """A zero-filled parameter ``blob<i>`` of ``shape`` and the pycaffe blob over it."""
        name = f"blob{len(self.blob_names)}"
        self.add_blob(name, shape)
        return LayerBlob(self, name)

    def call(self, what, fn, *args):
        """Run user code; an exception names the layer and module and chains the user's own.

        The layer blobs' host copies are refreshed before and written back after."""
        for blob in self.layer_blobs:
            blob._device_changed()
        try:
            return fn(*args)
        except Exception as e:
            raise self.user_error(what, e) from e
        finally:
            for blob in self.layer_blobs:
                blob._push()

    def user_error(self, what, e):
        return PythonLayerError(f"{self.where}: {what} raised {type(e).__name__}: {e}")

    def _zeros(self, shapes, dtype=torch.float32):
        return [_blob(torch.zeros(tuple(s), dtype=dtype)) for s in shapes]

    def top_shapes(self, bottom_shapes):
        self.call("reshape", self.impl.reshape, self._zeros(bottom_shapes), self.tops)
        return [blob.shape for blob in self.tops]

    def forward(self, *bottoms):
        if not self.tops:
            self.run_forward(bottoms)
            return ()
        out = _PythonFunction.apply(self, len(bottoms), *bottoms, *self.blobs)
        return out[0] if len(out) == 1 else out

    def run_forward(self, bottoms):
        """reshape + forward on blobs of ``bottoms``; the tops' data as tensors."""
        bottom = [_blob(b) for b in bottoms]
        dtype = bottoms[0].dtype if bottoms else torch.float32
        self.tops = [_retyped(blob, dtype) for blob in self.tops]
        self.call("reshape", self.impl.reshape, bottom, self.tops)
        self.call("forward", self.impl.forward, bottom, self.tops)
        return bottom, [torch.from_numpy(blob.data).clone() for blob in self.tops]

    def run_backward(self, bottom, tops, grads, propagate_down):
        """backward with the tops' data and diffs; the bottoms' diffs as tensors (None where not
        asked), then the diffs written to the layer blobs (zero where none was written)."""
        top = [Blob(t, g.detach().cpu().contiguous()) for t, g in zip(tops, grads)]
        for blob in self.layer_blobs:
            blob.grad = torch.zeros_like(blob._data)
        try:
            self.call("backward", self.impl.backward, top, list(propagate_down), bottom)
            param_diffs = [blob.grad for blob in self.layer_blobs]
        finally:
            for blob in self.layer_blobs:
                blob.grad = None
        return [torch.from_numpy(b.diff).clone() if down else None
                for b, down in zip(bottom, propagate_down)], param_diffs


class _PythonFunction(torch.autograd.Function):
    """Autograd around a user's Python layer: forward and backward run on numpy blobs.

    Inputs: the layer, the number of bottoms, the bottoms, then the layer's parameters
    (read through ``self.blobs``; passed here so that autograd sends them gradients)."""

    @staticmethod
    def forward(ctx, layer, n_bottoms, *inputs):
        bottoms = inputs[:n_bottoms]
        bottom, tops = layer.run_forward(bottoms)
        device = bottoms[0].device if bottoms else layer.ctx.device
        ctx.layer, ctx.bottom, ctx.tops, ctx.devices = layer, bottom, tops, [b.device for b in bottoms]
        return tuple(t.to(device) for t in tops)

    @staticmethod
    def backward(ctx, *grads):
        down = ctx.needs_input_grad[2:2 + len(ctx.devices)]
        diffs, param_diffs = ctx.layer.run_backward(ctx.bottom, ctx.tops, grads, down)
        param_down = ctx.needs_input_grad[2 + len(ctx.devices):]
        return (None, None, *(d if d is None else d.to(dev) for d, dev in zip(diffs, ctx.devices)),
                *(d if want else None for d, want in zip(param_diffs, param_down)))
