"""The pycaffe-shaped API: ``protocaffe.Net``, blobs with ``.data``/``.diff``, set_mode_*.

A pycaffe script ports by changing its import::

    import protocaffe as caffe
    caffe.set_mode_cpu()
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].data[...] = image
    out = net.forward()
    net.backward(prob=grad)

Underneath is :class:`protocaffe.net.CaffeNet`, a plain ``torch.nn.Module``
(``net.module``). On the CPU, ``.data`` and ``.diff`` are writable numpy views
of the tensors; on a GPU they are copies (write with ``blob.data = array``).
"""
from collections import OrderedDict

import numpy as np
import torch

from protocaffe.errors import CaffeError
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2

_MODE = {"device": torch.device("cpu"), "gpu_id": 0}


def set_mode_cpu():
    """Run nets made from now on on the CPU."""
    _MODE["device"] = torch.device("cpu")


def set_mode_gpu():
    """Run nets made from now on on the CUDA device chosen by set_device (default 0)."""
    if not torch.cuda.is_available():
        raise CaffeError("set_mode_gpu: no CUDA device is available")
    _MODE["device"] = torch.device("cuda", _MODE["gpu_id"])


def set_device(device_id):
    """Choose the CUDA device that GPU mode uses."""
    _MODE["gpu_id"] = int(device_id)
    if _MODE["device"].type == "cuda":
        _MODE["device"] = torch.device("cuda", int(device_id))


def current_device():
    return _MODE["device"]


def _numpy(t):
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


class Blob:
    """A named tensor with Caffe's ``data`` and ``diff`` (numpy), ``shape``, ``count``, ``reshape``."""

    def __init__(self, data, diff=None):
        self._data = data
        self._diff = diff

    @property
    def data(self):
        return _numpy(self._data)

    @data.setter
    def data(self, value):
        with torch.no_grad():
            self._data.copy_(torch.as_tensor(np.asarray(value)).reshape(self._data.shape))

    @property
    def diff(self):
        if self._diff is None:
            self._diff = torch.zeros_like(self._data)
        return _numpy(self._diff)

    @diff.setter
    def diff(self, value):
        self.diff  # noqa: B018  (allocates the diff if needed)
        self._diff.copy_(torch.as_tensor(np.asarray(value)).reshape(self._diff.shape))

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
        self._data = torch.zeros(tuple(int(d) for d in shape), dtype=self._data.dtype,
                                 device=self._data.device)
        self._diff = None


class _ParamBlob(Blob):
    """A parameter tensor: ``diff`` is its accumulated gradient."""

    def __init__(self, tensor):
        super().__init__(tensor)

    @property
    def diff(self):
        t = self._data
        if t.grad is None:
            t.grad = torch.zeros_like(t)
        return _numpy(t.grad)

    @diff.setter
    def diff(self, value):
        self.diff  # noqa: B018
        self._data.grad.copy_(torch.as_tensor(np.asarray(value)).reshape(self._data.shape))


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


class Net:
    """A Caffe net with pycaffe's interface. ``Net(prototxt, [weights], phase, level=0, stages=())``."""

    def __init__(self, network_file, *args, weights=None, phase=None, level=None, stages=(), seed=None):
        weights, phase = _parse_net_args(args, weights, phase)
        device = current_device()
        self.module = build_net(network_file, phase, level=level, stages=stages, weights=weights,
                                seed=seed, device=device)
        self.device = device
        m = self.module
        self.inputs = list(m.input_names)
        self.outputs = list(m.output_names)
        self.blobs = OrderedDict()
        for name, shape in m.blob_shapes.items():
            self.blobs[name] = Blob(torch.zeros(shape, device=device))
        self.layer_dict = OrderedDict(m.layer_by_name())
        self.layers = list(self.layer_dict.values())
        self._layer_names = list(self.layer_dict)
        self.params = OrderedDict(
            (name, [_ParamBlob(t) for t in layer.blobs])
            for name, layer in self.layer_dict.items() if layer.blob_names)
        self._out = None

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run the net. Keyword arrays are copied into the input blobs first.

        Returns ``{name: blob.data}`` for the outputs and the names in ``blobs``.
        ``start``/``end`` are not supported (the whole net runs).
        """
        if start is not None or end is not None:
            raise CaffeError("Net.forward(start=..., end=...) is not supported; the whole net runs")
        for name, value in kwargs.items():
            if name not in self.inputs:
                raise CaffeError(f"'{name}' is not an input of this net; inputs: {self.inputs}")
            value = np.asarray(value)
            if value.shape != self.blobs[name].shape:
                self.blobs[name].reshape(*value.shape)
            self.blobs[name].data = value
        need_grad = self.module.param.force_backward
        feeds = {}
        for name in self.inputs:
            t = self.blobs[name]._data.detach().clone()
            feeds[name] = t.requires_grad_(need_grad)
        self._run(feeds)
        names = list(self.outputs) + list(blobs or [])
        return {n: self.blobs[n].data for n in names}

    def _run(self, feeds):
        """Forward, recording every blob; the first tensor under each name keeps its gradient,
        since an in-place layer overwrites a blob's data but Caffe's diff is that of its input."""
        out, first = self.module.run(feeds, first={})
        for name, t in first.items():
            if t.requires_grad and not t.is_leaf:
                t.retain_grad()
        for name, t in out.items():
            self.blobs.setdefault(name, Blob(t))
            self.blobs[name]._data = t
            self.blobs[name]._diff = None
        self._feeds, self._out, self._first = feeds, out, first
        return out

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Backpropagate: from the loss, or from the top diffs given as keywords.

        Returns ``{name: blob.diff}`` for the inputs and the names in ``diffs``.
        """
        if start is not None or end is not None:
            raise CaffeError("Net.backward(start=..., end=...) is not supported; the whole net runs")
        out = self._out
        if out is None:
            raise CaffeError("Net.backward() needs a forward() first")
        if kwargs:
            tensors, grads = [], []
            for name, value in kwargs.items():
                t = out[name]
                tensors.append(t)
                grads.append(torch.as_tensor(np.asarray(value), dtype=t.dtype).to(t.device).reshape(t.shape))
            torch.autograd.backward(tensors, grads)
        else:
            self.module.loss(out).backward()
        for name, t in self._first.items():
            if t.grad is not None:
                self.blobs[name]._diff = t.grad
        for name, t in self._feeds.items():
            if t.grad is not None:
                self.blobs[name]._diff = t.grad
        names = list(self.inputs) + list(diffs or [])
        return {n: self.blobs[n].diff for n in names}

    def set_input_arrays(self, data, labels, layer=None):
        """Feed numpy arrays to the net's MemoryData layer (the first, or the one named)."""
        layers = [l for n, l in self.layer_dict.items() if l.type == "MemoryData" and layer in (None, n)]
        if not layers:
            raise CaffeError("set_input_arrays needs a MemoryData layer in the net")
        layers[0].set_input_arrays(data, labels)

    def save(self, path):
        """Write the weights as a .caffemodel."""
        self.module.save(path)

    def copy_from(self, path):
        """Load weights by layer name from a .caffemodel."""
        self.module.copy_from(path)

    def share_with(self, other):
        """Use ``other``'s parameter tensors for layers of the same name (pycaffe's share_with)."""
        theirs = other.module.layer_by_name()
        for name, layer in self.module.layer_by_name().items():
            if name in theirs:
                for blob_name in layer.blob_names:
                    setattr(layer, blob_name, getattr(theirs[name], blob_name))


TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
