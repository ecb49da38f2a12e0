"""An InnerProduct's weight rows in blocks, one per thread: ``y = x W^T + b`` as a batched
product over the blocks, which torch runs in parallel, one single-threaded product per block.

At batch 1 an InnerProduct is a matrix-vector product that reads each weight once: its
speed is the memory bandwidth the cores draw. On the AMD EPYC Zen 3 this was measured on
(2 threads), VGG-16's fc6 (411 MB of weights) took 17-20 ms by MKL (``F.linear``, one core
whatever the threads), 11-13 ms by oneDNN, 10.7 ms as two blocks. Whether a layer runs
this way is measured per machine (:mod:`protocaffe.deploy.settings`).
"""
import torch
import torch.nn.functional as F

MAX_PARTS = 8
"""Blocks at most: a matrix-vector product is bound by memory bandwidth, which a few cores
draw in full."""


def parts():
    """The blocks a product in row blocks uses: one per intra-op thread, at most MAX_PARTS."""
    return min(torch.get_num_threads(), MAX_PARTS)


class RowBlocks:
    """``weight`` (N, K) and ``bias`` (N,) or None in ``parts`` blocks of rows (N padded with
    zero rows to a multiple of ``parts``). ``blocks(x)``: x (M, K) -> (M, N)."""

    def __init__(self, weight, bias, parts):
        self.n = weight.shape[0]
        extra = -self.n % parts
        if extra:
            weight = F.pad(weight, (0, 0, 0, extra))
            bias = None if bias is None else F.pad(bias, (0, extra))
        self.weight = weight.view(parts, -1, weight.shape[1]).transpose(1, 2)  # (parts, K, N / parts)
        self.bias = None if bias is None else bias.view(parts, 1, -1)

    def __call__(self, x):
        xs = x.unsqueeze(0).expand(self.weight.shape[0], -1, -1)
        y = torch.bmm(xs, self.weight) if self.bias is None else torch.baddbmm(self.bias, xs, self.weight)
        return y.transpose(0, 1).reshape(x.shape[0], -1)[:, :self.n]
