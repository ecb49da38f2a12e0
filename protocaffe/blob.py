"""pycaffe's Blob: ``.data`` and ``.diff`` as numpy arrays over a tensor that may live on a device.

A leaf module (it imports no other part of protocaffe but the errors): the pycaffe surface
and the Python layer type both take Blob from here.

On the CPU the arrays are views of the tensors, so writes land at once. On a
device they are host copies kept as Caffe's SyncedMemory keeps them: reading
``.data`` copies the device values to the host if the device is newer, and
marks the host as the side the user may write (Caffe's ``mutable_cpu_data``);
the net copies such host arrays back to the device before its next forward
or backward (:meth:`Blob._push`), and marks the device newer after it ran
(:meth:`Blob._device_changed`). So ``blob.data[...] = x`` in GPU mode reaches
the device, and a held array is refreshed in place when read again.

A blob computed in bf16 or fp16 (caffe.set_precision, or the caller's torch.autocast)
is kept the same way on the CPU too: its host copy is a float32 array (numpy has no
bf16), and what the caller writes there is rounded into the tensor before the net runs.

After the net's fast forward (protocaffe.deploy) a blob the fast path did not keep
is *pending*: reading its data first has the net compute it (``Blob._pending``).
A parameter blob remembers that its data was handed out, and whether the array is
still held, so that the net refolds the weights the caller may have written.
"""
import weakref

import numpy as np
import torch

from protocaffe.errors import CaffeError

LOW_PRECISION = (torch.bfloat16, torch.float16)
"""Tensor dtypes shown to the caller as float32 host copies."""


def _host(tensor):
    """A tensor's values as a numpy array on the host, float32 for the low precisions."""
    t = tensor.detach()
    return (t.float() if t.dtype in LOW_PRECISION else t).cpu().numpy()


class _HostCopy:
    """The host side of one device tensor: an array and whether it or the device is newer."""

    def __init__(self):
        self.array = None
        self.head = "device"  # "device": host stale; "host": host may be newer; "synced": equal

    def read(self, tensor):
        if self.array is None or self.array.shape != tuple(tensor.shape):
            self.array = _host(tensor).copy()
        elif self.head == "device":
            np.copyto(self.array, _host(tensor))
        self.head = "host"
        return self.array

    def push(self, tensor):
        """Copy the host array to the device if it may be newer; returns whether it did."""
        if self.head == "host" and self.array.shape == tuple(tensor.shape):
            # through .data: autograd's version counter is left alone, so a layer's backward
            # uses the values written (Caffe's semantics) instead of refusing to run
            tensor.data.copy_(torch.from_numpy(self.array))
            self.head = "synced"
            return True
        return False

    def device_changed(self):
        if self.array is not None:
            self.head = "device"


class Blob:
    """A named tensor with Caffe's ``data`` and ``diff`` (numpy), ``shape``, ``count``, ``reshape``."""

    #: treat CPU tensors as if they were on a device (host copies, not views): tests the sync path
    host_copies_on_cpu = False

    def __init__(self, data, diff=None):
        self._data = data
        self._diff = diff
        self._host = {"data": _HostCopy(), "diff": _HostCopy()}
        self._pending = None

    def _tensor(self, which):
        if which == "data" and self._pending is not None:
            self._pending(self)
        if which == "diff" and self._diff is None:
            self._diff = torch.zeros_like(self._data)
        return self._data if which == "data" else self._diff

    @staticmethod
    def _mirrored(tensor):
        """Whether the caller sees a host copy of ``tensor`` (not a view of it)."""
        return tensor.device.type != "cpu" or tensor.dtype in LOW_PRECISION or Blob.host_copies_on_cpu

    def _array(self, which):
        tensor = self._tensor(which)
        if not self._mirrored(tensor):
            return tensor.detach().numpy()
        return self._host[which].read(tensor)

    def _write(self, which, value):
        arr = self._array(which)
        arr[...] = np.asarray(value).reshape(arr.shape)

    data = property(lambda self: self._array("data"), lambda self, v: self._write("data", v),
                    doc="The values, a numpy array (a view on the CPU, a synced host copy on a device).")
    diff = property(lambda self: self._array("diff"), lambda self, v: self._write("diff", v),
                    doc="The gradient, a numpy array like ``data``.")

    def _gpu_ptr(self, which):
        """Caffe's mutable_gpu_data/diff as an address: host writes are pushed first, and the
        host copy is re-read afterwards (the caller may write through the pointer)."""
        tensor = self._tensor(which)
        if tensor.device.type != "cuda":
            raise CaffeError(f"_gpu_{which}_ptr: this blob lives on the {tensor.device.type}; "
                             "call caffe.set_mode_gpu() before making the net")
        self._push()
        self._host[which].device_changed()
        return tensor.data_ptr()

    _gpu_data_ptr = property(lambda self: self._gpu_ptr("data"),
                             doc="The device address of ``data`` (an int), for CUDA code outside torch.")
    _gpu_diff_ptr = property(lambda self: self._gpu_ptr("diff"), doc="The device address of ``diff``.")

    def _existing(self):
        """("data", tensor) and ("diff", tensor or None): the tensors as they are, no diff made."""
        return (("data", self._data), ("diff", self._diff))

    def _push(self):
        """Copy host arrays written since the last sync to the device (before the net runs);
        whether the data was among them."""
        data_pushed = False
        if self._host["data"].head != "host" and self._host["diff"].head != "host":
            return False  # no host array may be newer: nothing to look up (pycaffe syncs every blob per forward)
        for which, tensor in self._existing():
            if tensor is not None and self._mirrored(tensor) and self._host[which].push(tensor):
                data_pushed |= which == "data"
        return data_pushed

    def _device_changed(self):
        for host in self._host.values():
            host.device_changed()

    def _set(self, data=None, diff=None):
        """Rebind the tensors after the net ran; the host copies become stale."""
        if data is not None:
            self._data = data
            if self._diff is not None and self._diff.shape != data.shape:
                self._diff = None
        if diff is not None:
            self._diff = diff
        self._device_changed()

    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def count(self):
        return self._data.numel()

    @property
    def num(self):
        return self.shape[0]

    @property
    def channels(self):
        return self.shape[1]

    @property
    def height(self):
        return self.shape[2]

    @property
    def width(self):
        return self.shape[3]

    def reshape(self, *shape):
        """New zero-filled storage of ``shape`` (Caffe then calls ``net.reshape()``)."""
        shape = tuple(int(d) for d in shape)
        if shape != self.shape:
            self._data = torch.zeros(shape, dtype=self._data.dtype, device=self._data.device)
            self._diff = None
            self._host = {"data": _HostCopy(), "diff": _HostCopy()}


class ParamBlob(Blob):
    """A layer's parameter tensor (looked up by name, so shared tensors stay shared); ``diff`` is its gradient."""

    def __init__(self, layer, name):
        self._layer, self._name = layer, name
        self._host = {"data": _HostCopy(), "diff": _HostCopy()}
        self._pending = None
        self._handed, self._written = None, False

    def _array(self, which):
        arr = super()._array(which)
        if which == "data" and not self._mirrored(self._data):  # a view: the caller's writes land unseen
            self._handed, self._written = weakref.ref(arr), True
        return arr

    def _may_have_changed(self):
        """Whether the caller may have written the data since the last call: its array was
        handed out since, is still held (a view on the CPU), or was pushed to the device."""
        held = self._handed is not None and self._handed() is not None
        changed, self._written = self._written or held, False
        return changed

    @property
    def _data(self):
        return getattr(self._layer, self._name)

    @property
    def _diff(self):
        t = self._data
        if t.grad is None:
            t.grad = torch.zeros_like(t)
        return t.grad

    def _tensor(self, which):
        return self._data if which == "data" else self._diff

    def _existing(self):
        return (("data", self._data), ("diff", self._data.grad))

    def _push(self):
        self._written |= super()._push()

    def reshape(self, *shape):
        raise CaffeError(f"parameter {self._name} of layer '{self._layer.name}' keeps its shape "
                         f"{self.shape}; reshape the net's input blobs instead")
