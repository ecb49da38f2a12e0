"""pycaffe's solvers: ``get_solver``, ``SGDSolver`` and the others, with pycaffe Nets on top.

``solver.net`` and ``solver.test_nets`` are :class:`~protocaffe.pycaffe.net.Net` views of
the solver's own modules (same tensors), so after ``solver.step(n)`` the blobs hold the
last iteration's values and ``solver.test_nets[0].forward()`` runs the next test batch
with the current weights. The loop itself is :class:`protocaffe.solver.CaffeSolver`'s.
"""
from protocaffe import solver as _solvers
from protocaffe.distributed import solver_rank
from protocaffe.proto import caffe_pb2
from protocaffe.pycaffe.mode import current_device
from protocaffe.pycaffe.net import Net


class Solver:
    """A Caffe solver as pycaffe shows it: ``net``, ``test_nets``, ``iter``, ``step``, ``solve``,
    ``add_callback``, ``snapshot``, ``restore``; anything else (``param``, ``test_all``) is the
    underlying solver's (``solver.solver``)."""

    def __init__(self, solver):
        self.solver = solver
        solver.root = solver_rank() == 0  # Caffe's root_solver(): only it tests, displays, snapshots
        self.net = Net.wrap(solver.net)
        self.test_nets = [Net.wrap(t) for t in solver.test_nets]
        for net in [self.net] + self.test_nets:
            net.module.register_forward_hook(_keep_blobs(net))
        self._callbacks = []
        self._started = None
        solver.net.register_forward_pre_hook(self._on_forward)
        self._apply_update = solver.apply_update
        solver.apply_update = self._update

    @property
    def iter(self):
        return self.solver.iter

    @iter.setter
    def iter(self, value):
        self.solver.iter = int(value)

    def step(self, iters):
        """Run ``iters`` training iterations (with tests, display and snapshots as configured)."""
        self._sync()
        self.solver.step(int(iters))
        self._changed()

    def solve(self, resume_file=None):
        """Train to max_iter, optionally resuming from a .solverstate."""
        self._sync()
        self.solver.solve(resume_file)
        self._changed()

    def snapshot(self):
        """Write the .caffemodel and .solverstate of the current iteration (host writes included)."""
        self._sync()
        return self.solver.snapshot()

    def restore(self, path):
        self.solver.restore(path)
        self._changed()

    def share_weights(self, net):
        """Make ``net`` (a pycaffe Net) use this solver's train-net tensors, by layer name."""
        net.share_with(self.net)

    def add_callback(self, on_start, on_gradients=None):
        """Call ``on_start()`` before each iteration's forward and ``on_gradients()`` before its
        update; or, given a ``caffe.NCCL``, its ``on_start`` and ``on_gradients_ready``."""
        if on_gradients is None and hasattr(on_start, "on_gradients_ready"):
            on_start, on_gradients = on_start.on_start, on_start.on_gradients_ready
        self._callbacks.append((on_start, on_gradients))

    def _on_forward(self, module, args):
        if self._started != self.solver.iter:
            self._started = self.solver.iter
            for on_start, _ in self._callbacks:
                on_start()

    def _update(self):
        for _, on_gradients in self._callbacks:
            on_gradients()
        self._apply_update()

    def _sync(self):
        for net in [self.net] + self.test_nets:
            net._sync()

    def _changed(self):
        for net in [self.net] + self.test_nets:
            net._params_changed()

    def __getattr__(self, name):
        return getattr(self.solver, name)


def _keep_blobs(net):
    """A forward hook: the blobs of a forward run by the solver become the pycaffe Net's."""
    def hook(module, args, blobs):
        for name, t in blobs.items():
            net._blob(name, t)._set(data=t)
    return hook


def _param(path):
    """The solver prototxt with solver_mode and device set from pycaffe's mode, as Caffe::mode()
    rules, and the random seed offset by the solver rank, as Caffe's Solver::Init does."""
    p = _solvers.read_solver_param(path)
    if p.random_seed >= 0:
        p.random_seed += solver_rank()
    device = current_device()
    if device.type == "cuda":
        p.solver_mode, p.device_id = caffe_pb2.SolverParameter.GPU, device.index or 0
    else:
        p.solver_mode = caffe_pb2.SolverParameter.CPU
    return p


def get_solver(path):
    """The solver a prototxt describes (its ``type``, default SGD)."""
    return Solver(_solvers.get_solver(_param(path)))


def _typed(name):
    make_inner = getattr(_solvers, name)

    def make(path):
        return Solver(make_inner(_param(path)))
    make.__name__ = name
    make.__doc__ = make_inner.__doc__
    return make


SGDSolver = _typed("SGDSolver")
NesterovSolver = _typed("NesterovSolver")
AdaGradSolver = _typed("AdaGradSolver")
RMSPropSolver = _typed("RMSPropSolver")
AdaDeltaSolver = _typed("AdaDeltaSolver")
AdamSolver = _typed("AdamSolver")
