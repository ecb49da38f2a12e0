"""pycaffe's multi-process training: ``NCCL``, ``solver_count``/``solver_rank``, ``set_multiprocess``.

Caffe's ``python/train.py`` pattern runs unchanged, one process per device::

    uid = caffe.NCCL.new_uid()                     # in the parent, passed to every child
    # in child ``rank`` of ``n``:
    caffe.set_solver_count(n); caffe.set_solver_rank(rank); caffe.set_multiprocess(True)
    solver = caffe.SGDSolver(path)                 # rank r reads records r, r + n, ... of its Data layer
    nccl = caffe.NCCL(solver, uid)                 # joins the group
    nccl.bcast()                                   # rank 0's weights everywhere
    solver.add_callback(nccl)                      # gradients averaged over the ranks before each update
    solver.net.after_backward(nccl)                # (layer-wise reduction: see below)
    solver.step(solver.param.max_iter)

Underneath is torch.distributed: NCCL for solvers on CUDA, gloo on the CPU (so the
pattern runs, and is tested, without a GPU). The uid is a file rendezvous in a fresh
temporary folder, so the processes must share a file system (one machine, as with
Caffe's NCCL class); several machines go through ``torchrun ... -m protocaffe train``.
The gradients are all-reduced in one flat buffer when the last backward of the
iteration is done; Caffe's layer-wise reduction during backward (``after_backward``,
``layer_wise_reduce``) is accepted and gives the same numbers, without the overlap,
which the command-line path (``protocaffe train --gpu 0,1``, DDP) has.
"""
import os
import tempfile

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from protocaffe import distributed
from protocaffe.distributed import set_solver_count, set_solver_rank, solver_count, solver_rank
from protocaffe.errors import CaffeError

_MULTIPROCESS = {"on": False}


def set_multiprocess(on):
    """Caffe's set_multiprocess: this process is one of several solvers (recorded; the
    process layout itself comes from set_solver_count and set_solver_rank)."""
    _MULTIPROCESS["on"] = bool(on)


class NCCL:
    """One solver of ``solver_count()``: ``bcast()``, and as a solver callback, gradients
    averaged over the ranks (summed, divided by the count, as Caffe's NCCL class)."""

    def __init__(self, solver, uid):
        inner = getattr(solver, "solver", solver)
        device = inner.device
        backend = "nccl" if device.type == "cuda" else "gloo"
        distributed._check_backend(backend, "caffe.NCCL")
        if not (dist.is_initialized() or uid.startswith(("file://", "tcp://", "env://"))):
            raise CaffeError(f"caffe.NCCL: the uid must come from caffe.NCCL.new_uid(); found '{uid}'")
        count, rank = solver_count(), solver_rank()
        if not 0 <= rank < count:
            raise CaffeError(f"caffe.NCCL: solver rank {rank} is outside 0..{count - 1} "
                             "(set_solver_count and set_solver_rank first)")
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method=uid, rank=rank, world_size=count,
                                    timeout=distributed._timeout())
        inner.root = rank == 0
        self.solver = solver
        self.params = [lp.tensor for lp in inner.params if lp.tensor.requires_grad]

    @staticmethod
    def new_uid():
        """A rendezvous for one job: a file in a fresh temporary folder."""
        return "file://" + os.path.join(tempfile.mkdtemp(prefix="protocaffe_nccl_"), "rendezvous")

    def bcast(self):
        """Copy rank 0's weights to every rank (Caffe: NCCL::Broadcast)."""
        with torch.no_grad():
            for t in self.params:
                dist.broadcast(t, 0)
        changed = getattr(self.solver, "_changed", None)
        if changed:
            changed()

    def on_start(self):
        pass

    def on_gradients_ready(self):
        """Sum the iteration's gradients over the ranks and divide by their number."""
        grads = []
        for t in self.params:
            if t.grad is None:
                t.grad = torch.zeros_like(t)
            grads.append(t.grad)
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= solver_count()
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)

    def __call__(self, layer_index):
        """As a Net callback (``net.after_backward(nccl)``): nothing per layer; the reduction
        runs once the iteration's gradients are ready."""


__all__ = ["NCCL", "set_multiprocess", "set_solver_count", "set_solver_rank", "solver_count", "solver_rank"]
