"""Caffe's update rules as small functions over one parameter's gradient.

Each rule takes (diff, history list, local_rate, SolverParameter p, t) and returns
the value Caffe leaves in the diff, which the solver then subtracts from the
weights; ``t`` is the iteration being computed (Adam's bias correction uses t + 1).
The number of history tensors per parameter is in HISTORY. Where Caffe differs
from torch.optim: the learning rate scales the gradient *before* momentum.
"""
import math

import torch


def sgd(g, h, rate, p, t):
    """v = momentum v + rate g; step v"""
    h[0].mul_(p.momentum).add_(g, alpha=rate)
    return h[0].clone()


def nesterov(g, h, rate, p, t):
    """v' = momentum v + rate g; step (1 + momentum) v' - momentum v"""
    old = h[0].clone()
    h[0].mul_(p.momentum).add_(g, alpha=rate)
    return (1 + p.momentum) * h[0] - p.momentum * old


def adagrad(g, h, rate, p, t):
    """G += g^2; step rate g / (sqrt(G) + delta)"""
    h[0].add_(g * g)
    return rate * g / (h[0].sqrt() + p.delta)


def rmsprop(g, h, rate, p, t):
    """E = rms_decay E + (1 - rms_decay) g^2; step rate g / (sqrt(E) + delta)"""
    h[0].mul_(p.rms_decay).add_(g * g, alpha=1 - p.rms_decay)
    return rate * g / (h[0].sqrt() + p.delta)


def adadelta(g, h, rate, p, t):
    """E_g = m E_g + (1-m) g^2; u = g sqrt((E_u + delta) / (E_g + delta));
    E_u = m E_u + (1-m) u^2; step rate u"""
    h[0].mul_(p.momentum).add_(g * g, alpha=1 - p.momentum)
    u = g * ((h[1] + p.delta) / (h[0] + p.delta)).sqrt()
    h[1].mul_(p.momentum).add_(u * u, alpha=1 - p.momentum)
    return rate * u


def adam(g, h, rate, p, t):
    """m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    step rate sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) m / (sqrt(v) + delta)"""
    b1, b2 = p.momentum, p.momentum2
    h[0].mul_(b1).add_(g, alpha=1 - b1)
    h[1].mul_(b2).add_(g * g, alpha=1 - b2)
    correction = math.sqrt(1 - math.pow(b2, t + 1)) / (1 - math.pow(b1, t + 1))
    return (rate * correction) * (h[0] / (h[1].sqrt() + p.delta))


RULES = {"SGD": sgd, "Nesterov": nesterov, "AdaGrad": adagrad, "RMSProp": rmsprop,
         "AdaDelta": adadelta, "Adam": adam}
HISTORY = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}


def regularize(g, data, decay, kind):
    """Weight decay joins the gradient: L2 adds decay * w, L1 adds decay * sign(w)."""
    if not decay:
        return g
    if kind == "L2":
        return g.add(data, alpha=decay)
    if kind == "L1":
        return g.add(torch.sign(data), alpha=decay)
    raise ValueError(kind)
