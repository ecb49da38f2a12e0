"""The pycaffe-shaped API: ``Net``, blobs with ``.data``/``.diff``, solvers, set_mode_*.

A pycaffe script ports by changing its import::

    import protocaffe as caffe
    caffe.set_mode_cpu()
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].data[...] = image
    out = net.forward()
    net.backward(prob=grad)

Underneath is :class:`protocaffe.net.CaffeNet`, a plain ``torch.nn.Module``
(``net.module``). ``.data`` and ``.diff`` are numpy arrays: views on the CPU,
host copies kept in sync on a GPU (see :mod:`protocaffe.blob`).
"""
from protocaffe.layer_types import LAYERS
from protocaffe.proto import caffe_pb2
from protocaffe.blob import Blob, ParamBlob
from protocaffe.pycaffe.mode import (Timer, current_device, has_nccl, init_log, log, set_device, set_mode_cpu,
                                     set_mode_gpu, set_random_seed)
from protocaffe.pycaffe.layer import Layer
from protocaffe.pycaffe.net import LayerView, Net
from protocaffe.pycaffe.parallel import (NCCL, set_multiprocess, set_solver_count, set_solver_rank, solver_count,
                                         solver_rank)
from protocaffe.pycaffe.solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                                       RMSPropSolver, SGDSolver, Solver, get_solver)

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


def layer_type_list():
    """The registered layer types (the prototxt ``type`` strings this build runs), sorted."""
    return sorted(LAYERS)


__all__ = ["Blob", "ParamBlob", "Layer", "LayerView", "Net", "Solver", "TRAIN", "TEST", "Timer", "current_device",
           "has_nccl", "init_log", "log",
           "set_device", "set_mode_cpu", "set_mode_gpu", "set_random_seed", "layer_type_list",
           "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "NCCL", "set_multiprocess", "set_solver_count",
           "set_solver_rank", "solver_count", "solver_rank"]
