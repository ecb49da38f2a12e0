"""protocaffe: Caffe's prototxt nets, solvers and models, run on PyTorch.

The public API, shaped like pycaffe's (``import protocaffe as caffe``):

- ``Net(prototxt, [weights], phase)``, ``TRAIN``, ``TEST``
- ``set_mode_cpu()``, ``set_mode_gpu()``, ``set_device(i)``
- ``get_solver(path)``, ``SGDSolver(path)`` and the other solver types
- ``NCCL``, ``set_solver_count``, ``set_solver_rank``: pycaffe's multi-process training
- ``CaffeNet`` / ``build_net``: the plain ``torch.nn.Module`` underneath
- ``caffe_pb2``: the generated schema, as ``caffe.proto.caffe_pb2``
- ``Layer``: the base class of Python layers (``type: "Python"``), pycaffe's ``caffe.Layer``
- ``NetSpec``, ``layers`` (L), ``params`` (P), ``to_proto``: pycaffe's net_spec
- ``Classifier``, ``Detector``: pycaffe's image classification and windowed detection
- ``draw``: pycaffe's ``caffe.draw`` (nets as Graphviz pictures)
- ``io``: pycaffe's ``caffe.io`` (Transformer, load_image, blob/Datum conversions)
- ``export_onnx(net, path, ...)``: the net as an ONNX model (needs the ``onnx`` extra)
"""
from protocaffe import draw, io
from protocaffe._version import CAFFE_VERSION
from protocaffe.errors import CaffeError
from protocaffe.net import CaffeNet, build_net
from protocaffe.net_spec import NetSpec, layers, params, to_proto
from protocaffe.proto import caffe_pb2
from protocaffe.pycaffe import (NCCL, AdaDeltaSolver, AdaGradSolver, AdamSolver, Blob, Layer, Net,
                                NesterovSolver, RMSPropSolver, SGDSolver, Solver, TEST, TRAIN, Timer,
                                get_solver, has_nccl, init_log, layer_type_list, set_device,
                                set_mode_cpu, set_mode_gpu, set_multiprocess, set_random_seed,
                                set_solver_count, set_solver_rank, solver_count, solver_rank)

from protocaffe.classifier import Classifier
from protocaffe.detector import Detector

__version__ = CAFFE_VERSION
"""The Caffe release whose pycaffe API this follows (pycaffe's ``caffe.__version__``); protocaffe's
own version is ``protocaffe._version.VERSION`` (``protocaffe --version`` prints both)."""

__all__ = [
    "Blob", "CaffeError", "CaffeNet", "Net", "TEST", "TRAIN", "build_net", "caffe_pb2",
    "set_device", "set_mode_cpu", "set_mode_gpu", "get_solver", "SGDSolver", "NesterovSolver",
    "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
    "Layer", "draw", "io", "Classifier", "Detector", "Solver", "Timer", "has_nccl", "init_log",
    "layer_type_list", "set_random_seed", "__version__", "NetSpec", "layers", "params", "to_proto",
    "export_onnx", "NCCL", "set_multiprocess", "set_solver_count", "set_solver_rank", "solver_count",
    "solver_rank",
]


def export_onnx(net, path, **options):
    """Write ``net`` as an ONNX model; see :func:`protocaffe.onnx_export.export_onnx` for the
    options. onnx is imported only here, so the core package does not need it."""
    from protocaffe.onnx_export import export_onnx as export
    return export(net, path, **options)
