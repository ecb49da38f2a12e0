"""Solvers with pycaffe's names: ``get_solver(path)`` builds the type the prototxt asks for;
``SGDSolver(path)`` and the others insist on their type, as pycaffe's classes do."""
import os

from protocaffe.errors import CaffeError
from protocaffe.solver.solver import CaffeSolver, read_solver_param, solver_gpu


def get_solver(path, **kwargs):
    """The solver a prototxt describes (its ``type``, default SGD)."""
    return CaffeSolver(path, **kwargs)


def _typed(type_name):
    def make(path, **kwargs):
        p = read_solver_param(path) if isinstance(path, (str, os.PathLike)) else path
        if p.HasField("type") and p.type != type_name:
            raise CaffeError(f"{path}: is a {p.type} solver, not {type_name}")
        p.type = type_name
        return CaffeSolver(p, **kwargs)
    make.__name__ = f"{type_name}Solver"
    make.__doc__ = f"A {type_name} solver from a solver prototxt."
    return make


SGDSolver = _typed("SGD")
NesterovSolver = _typed("Nesterov")
AdaGradSolver = _typed("AdaGrad")
RMSPropSolver = _typed("RMSProp")
AdaDeltaSolver = _typed("AdaDelta")
AdamSolver = _typed("Adam")

__all__ = ["CaffeSolver", "get_solver", "read_solver_param", "solver_gpu", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver"]
