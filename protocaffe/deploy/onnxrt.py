"""onnxruntime as a second engine for a deployed net, where it is installed and measured faster.

The net is exported by :mod:`protocaffe.onnx_export` (the same graph ``protocaffe export_onnx``
writes; its outputs the blobs the deployed net keeps) and run by onnxruntime's CPU provider
with torch's thread count. :mod:`protocaffe.deploy.settings` times it against the torch plan
on the first call and keeps the faster per machine and net. On the AMD EPYC (Zen 3, AVX2)
this was written on, onnxruntime's kernels ran MobileNet and SqueezeNet at batch 1 in about
half oneDNN's time through torch, VGG-16 in 1.3x (BENCHMARKS.md).

The session is made from the net's tensors as they are; before each call every parameter
is checked (same tensor, storage and autograd version), and a change exports the net again.
Its worker threads keep onnxruntime's default: they spin for a moment after a call before
they sleep (with spinning off, SqueezeNet 1.1's median time here rose from 6.8 to 11.3 ms), so
torch work started right after a forward may share the cores with them for that moment.
``PROTOCAFFE_ENGINES=torch`` keeps onnxruntime out.
"""
import importlib.util

import torch

from protocaffe.deploy.ops import Watch
from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log
from protocaffe.speed import release_freed_memory


def available():
    """Whether onnx (to export) and onnxruntime are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def fits(net, blobs):
    """Whether ``blobs`` have the shapes the net was built for (those its ONNX form has)."""
    return all(tuple(t.shape) == net.blob_shapes.get(n) for n, t in blobs.items())


def offered(deployed, blobs):
    """Whether onnxruntime may run ``deployed`` on ``blobs``: the CPU, float32, the shapes the net
    was built for, every source an Input the caller fills (a Data layer reads in torch), the
    package installed."""
    sources = [op for op in deployed.ops if op.source]
    return (available() and fits(deployed.net, blobs) and all(op.module.type == "Input" for op in sources)
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in blobs.values())
            and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in deployed.net.parameters()))


class OrtEngine:
    """The net as an onnxruntime session giving the blobs in ``keep``; ``run(blobs)`` -> {name: tensor}.
    Raises CaffeError where the net has no ONNX form."""

    def __init__(self, net, keep, threads):
        self.net, self.threads = net, threads
        self.outputs = sorted(keep)
        self.watch = Watch([(layer, n) for layer in net.layer_by_name().values() for n in layer.blob_names])
        self.session, self.inputs = None, []

    def _session(self):
        import onnxruntime
        from protocaffe.onnx_export import to_onnx
        try:
            model = to_onnx(self.net, outputs=self.outputs, checked=False)  # onnxruntime checks it
        except (CaffeError, NotImplementedError, ValueError, KeyError) as e:
            raise CaffeError(f"onnxruntime cannot run this net: {e}") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        options.log_severity_level = 3
        try:
            return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own error types: an op or an attribute it does not take
            raise CaffeError(f"onnxruntime cannot run this net: {e}") from None

    def run(self, blobs):
        if self.session is None or self.watch.stale():
            self.watch.note()
            self.session = self._session()
            release_freed_memory()  # the exported model's bytes, copied into the session
            self.inputs = [i.name for i in self.session.get_inputs()]  # those the outputs depend on
            log.debug("onnxruntime session made for %s", self.net.param.name or "the net")
        feed = {n: blobs[n].detach().contiguous().numpy() for n in self.inputs}
        out = self.session.run(self.outputs, feed)
        return {n: torch.from_numpy(a) for n, a in zip(self.outputs, out)}
