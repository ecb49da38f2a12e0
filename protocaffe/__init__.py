"""protocaffe: Caffe's prototxt nets, solvers and models, run on PyTorch.

The public API, shaped like pycaffe's (``import protocaffe as caffe``):

- ``Net(prototxt, [weights], phase)``, ``TRAIN``, ``TEST``
- ``set_mode_cpu()``, ``set_mode_gpu()``, ``set_device(i)``
- ``get_solver(path)``, ``SGDSolver(path)`` and the other solver types
- ``CaffeNet`` / ``build_net``: the plain ``torch.nn.Module`` underneath
- ``caffe_pb2``: the generated schema, as ``caffe.proto.caffe_pb2``
- ``export_onnx(net, path, ...)``: the net as an ONNX model (needs the ``onnx`` extra)
"""
from protocaffe.errors import CaffeError
from protocaffe.net import CaffeNet, build_net
from protocaffe.proto import caffe_pb2
from protocaffe.pycaffe import Blob, Net, TEST, TRAIN, set_device, set_mode_cpu, set_mode_gpu
from protocaffe.solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                               RMSPropSolver, SGDSolver, get_solver)

__all__ = [
    "Blob", "CaffeError", "CaffeNet", "Net", "TEST", "TRAIN", "build_net", "caffe_pb2",
    "set_device", "set_mode_cpu", "set_mode_gpu", "get_solver", "SGDSolver", "NesterovSolver",
    "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "export_onnx",
]


def export_onnx(net, path, **options):
    """Write ``net`` as an ONNX model; see :func:`protocaffe.onnx_export.export_onnx` for the
    options. onnx is imported only here, so the core package does not need it."""
    from protocaffe.onnx_export import export_onnx as export
    return export(net, path, **options)
