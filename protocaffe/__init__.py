"""protocaffe: Caffe's prototxt nets, solvers and models, run on PyTorch.

The public API, shaped like pycaffe's (``import protocaffe as caffe``):

- ``Net(prototxt, [weights], phase)``, ``TRAIN``, ``TEST``
- ``set_mode_cpu()``, ``set_mode_gpu()``, ``set_device(i)``
- ``get_solver(path)``, ``SGDSolver(path)`` and the other solver types
- ``CaffeNet`` / ``build_net``: the plain ``torch.nn.Module`` underneath
- ``caffe_pb2``: the generated schema, as ``caffe.proto.caffe_pb2``
- ``NetSpec``, ``layers`` (L), ``params`` (P), ``to_proto``: pycaffe's net_spec
- ``io``: pycaffe's ``caffe.io`` (Transformer, load_image, blob/Datum conversions)
"""
from protocaffe import io
from protocaffe.errors import CaffeError
from protocaffe.net import CaffeNet, build_net
from protocaffe.net_spec import NetSpec, layers, params, to_proto
from protocaffe.proto import caffe_pb2
from protocaffe.pycaffe import Blob, Net, TEST, TRAIN, set_device, set_mode_cpu, set_mode_gpu
from protocaffe.solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                               RMSPropSolver, SGDSolver, get_solver)

__all__ = [
    "Blob", "CaffeError", "CaffeNet", "Net", "TEST", "TRAIN", "build_net", "caffe_pb2",
    "set_device", "set_mode_cpu", "set_mode_gpu", "get_solver", "SGDSolver", "NesterovSolver",
    "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
    "io", "NetSpec", "layers", "params", "to_proto",
]
