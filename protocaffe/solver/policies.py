"""Caffe's learning-rate policies: pure functions of the solver settings and the iteration.

Each takes (SolverParameter p, iteration it, multistep position step) and returns
(rate, step); only ``multistep`` moves the step. Computed in double, used as float32.
"""
import math

from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER


def fixed(p, it, step):
    """base_lr"""
    return p.base_lr, step


def step_(p, it, step):
    """base_lr * gamma ^ floor(it / stepsize)"""
    return p.base_lr * math.pow(p.gamma, it // p.stepsize), step


def exp(p, it, step):
    """base_lr * gamma ^ it"""
    return p.base_lr * math.pow(p.gamma, it), step


def inv(p, it, step):
    """base_lr * (1 + gamma * it) ^ -power"""
    return p.base_lr * math.pow(1.0 + p.gamma * it, -p.power), step


def multistep(p, it, step):
    """base_lr * gamma ^ step, where step advances by one each time it reaches the next stepvalue"""
    if step < len(p.stepvalue) and it >= p.stepvalue[step]:
        step += 1
        LOGGER.info("MultiStep Status: Iteration %d, step = %d", it, step)
    return p.base_lr * math.pow(p.gamma, step), step


def poly(p, it, step):
    """base_lr * (1 - it / max_iter) ^ power"""
    return p.base_lr * math.pow(1.0 - float(it) / p.max_iter, p.power), step


def sigmoid(p, it, step):
    """base_lr / (1 + exp(-gamma * (it - stepsize)))"""
    return p.base_lr * (1.0 / (1.0 + math.exp(-p.gamma * (it - p.stepsize)))), step


def plateau(p, it, step):
    """base_lr * gamma ^ step, where step counts the drops made by plateau_observe (protocaffe's)"""
    return p.base_lr * math.pow(p.gamma, step), step


def plateau_observe(p, value, higher_is_better, best, wait, step):
    """One test round of the plateau policy: returns the new (best, wait, step).

    An improvement resets the wait; after ``plateau_patience`` rounds without one the
    step advances (the rate divides by 1/gamma), at most ``plateau_max_drops`` times.
    """
    improved = best is None or (value > best if higher_is_better else value < best)
    if improved:
        return value, 0, step
    wait += 1
    if wait >= p.plateau_patience and step < p.plateau_max_drops:
        return best, 0, step + 1
    return best, wait, step


POLICIES = {"fixed": fixed, "step": step_, "exp": exp, "inv": inv, "multistep": multistep,
            "poly": poly, "sigmoid": sigmoid, "plateau": plateau}


# what each policy reads besides base_lr (plateau is protocaffe's; its fields have defaults)
READS = {"step": ("stepsize", "gamma"), "exp": ("gamma",), "inv": ("gamma", "power"),
         "multistep": ("stepvalue", "gamma"), "poly": ("power", "max_iter"),
         "sigmoid": ("stepsize", "gamma")}


def check_policy(p, where, warn=True):
    """Caffe's checks in GetLearningRate, made at construction: stepsize > 0 (step, sigmoid),
    gamma >= 0. A field the policy reads but the file leaves unset (Caffe runs on with 0,
    e.g. gamma 0 sets the rate to 0 after the first step) gets a warning."""
    policy = p.lr_policy
    reads = READS.get(policy, ())
    if "stepsize" in reads and p.stepsize <= 0:
        raise CaffeError(f'{where}: lr_policy "{policy}" needs stepsize > 0; found '
                         f'{p.stepsize if p.HasField("stepsize") else "no stepsize"}')
    if "gamma" in reads and p.gamma < 0:
        raise CaffeError(f'{where}: lr_policy "{policy}" needs gamma >= 0; found {p.gamma}')
    for field in reads if warn else ():
        unset = not len(p.stepvalue) if field == "stepvalue" else not p.HasField(field)
        if unset:
            LOGGER.warning('%s: lr_policy "%s" reads %s, which is not set (Caffe uses 0)', where, policy, field)
