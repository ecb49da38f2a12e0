"""``protocaffe time --model M [--iterations 50] [--gpu N] [--precision bf16] [--compile]``: Caffe's ``caffe time``.

Times each layer's forward and backward, running the net layer by layer as
Caffe does (each layer's backward on its own, fed the gradients of the layers
above), and prints the averages in Caffe's words. The work is Caffe's: each
layer computes the gradients of its learnable parameters (lr_mult != 0) and of
the bottoms that Caffe's Net::Init marks as needing one (never the data's; none
at all in a net without a loss, such as a deploy net, unless it sets
force_backward). Then images/s and the achieved GFLOP/s against the machine's
measured matrix-multiply ceiling.
"""
import contextlib
import time

from torch.utils.flop_counter import FlopCounterMode

import torch

from protocaffe import log as logs
from protocaffe.commands.common import (add_net_flags, add_speed_flags, check_iterations, device_for,
                                         parse_gpu, phase, speed_from, stages)
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log, g
from protocaffe.net import build_net
from protocaffe.netlog import caffe_layers, need_backward
from protocaffe.proto import caffe_pb2
from protocaffe.speed import matmul_ceiling


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def needing_gradients(net):
    """{plan step key: (each bottom gets a gradient)}, as Caffe's Net::Init decides
    (bottom_need_backward, which ``caffe time`` passes to each layer's Backward)."""
    rows = [row for row in need_backward(caffe_layers(net), net.param.force_backward) if not row[0].split]
    return {step.key: tuple(needs) for step, (_, _, needs) in zip(net.plan, rows)}


def _learns(layer):
    return any(p.requires_grad for p in layer.parameters())


def forward_layers(net, device, times, needed, speed, flops=None):
    """Forward layer by layer; each layer's inputs are fresh leaves so its backward runs alone.
    With a ``flops`` dict, each layer's forward FLOPs are counted into it (slower: warm-up only)."""
    blobs, record = {}, []
    for step in net.plan:
        layer = net.layers[step.key]
        inputs = [blobs[b].detach().requires_grad_(need and blobs[b].is_floating_point())
                  for b, need in zip(step.bottoms, needed[step.key])]
        _sync(device)
        start = time.perf_counter()
        counter = FlopCounterMode(display=False) if flops is not None else contextlib.nullcontext()
        with speed.autocast(device), counter:
            out = layer(*inputs)
        _sync(device)
        times[step.key] += time.perf_counter() - start
        if flops is not None:
            flops[step.key] = counter.get_total_flops()
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        blobs.update(zip(step.tops, out))
        record.append((step, inputs, out))
    return record


def backward_layers(net, record, device, times):
    """Backward in reverse layer order, accumulating each blob's gradient from its consumers.

    The loss tops are seeded with their loss weights. A top that nobody sends a gradient
    (in a net without a loss, every top) gets ones: Caffe's layer reads whatever its top's
    diff holds, and the work is the same.
    """
    grads = {}
    seeds = net.loss_tops()
    for step, inputs, outs in reversed(record):
        pairs = []
        for top, out in zip(step.tops, outs):
            grad = grads.pop(top, None)
            w = seeds.pop(top, 0.0)
            if w:
                seed = torch.full_like(out, w)
                grad = seed if grad is None else grad + seed
            if out.requires_grad:
                pairs.append((out, torch.ones_like(out) if grad is None else grad))
        if not pairs:
            continue
        _sync(device)
        start = time.perf_counter()
        torch.autograd.backward([o for o, _ in pairs], [gr for _, gr in pairs])
        _sync(device)
        times[step.key] += time.perf_counter() - start
        for name, t in zip(step.bottoms, inputs):
            if t.grad is not None:
                grads[name] = t.grad if grads.get(name) is None else grads[name] + t.grad


def run(argv):
    args = add_speed_flags(add_net_flags(Flags("time", __doc__.splitlines()[0]))).parse(argv)
    logs.setup(args.log_dir or None)
    if not args.model:
        raise CaffeError("need a model definition to time: --model <file>")
    check_iterations(args)
    device = device_for(parse_gpu(args.gpu))
    net = build_net(args.model, phase(args, caffe_pb2.TRAIN), level=args.level, stages=stages(args),
                    weights=args.weights or None, device=device)
    speed = speed_from(args)
    speed.prepare(net, layers=True)
    needed = needing_gradients(net)
    fwd = {s.key: 0.0 for s in net.plan}
    bwd = {s.key: 0.0 for s in net.plan}
    flops = {}
    log.info("Performing Forward")
    record = forward_layers(net, device, dict(fwd), needed, speed, flops)
    loss = sum(float(w * out.detach().float().sum()) for step, _, outs in record
               for out, w in zip(outs, step.loss_weights) if w)
    log.info("Initial loss: %s", g(loss))
    log.info("Performing Backward")
    backward_layers(net, record, device, dict(bwd))
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", args.iterations)
    total_start = time.perf_counter()
    forward_total = backward_total = 0.0
    for j in range(args.iterations):
        net.zero_grad(set_to_none=True)  # gradients are not accumulated over iterations
        it_start = time.perf_counter()
        before = sum(fwd.values())
        record = forward_layers(net, device, fwd, needed, speed)
        forward_total += sum(fwd.values()) - before
        before = sum(bwd.values())
        backward_layers(net, record, device, bwd)
        backward_total += sum(bwd.values()) - before
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1,
                 g((time.perf_counter() - it_start) * 1000))
    total = (time.perf_counter() - total_start) * 1000
    n = args.iterations
    log.info("Average time per layer: ")
    for step in net.plan:
        name = net.layers[step.key].name
        log.info("%10s\tforward: %s ms.", name, g(fwd[step.key] * 1000 / n))
        log.info("%10s\tbackward: %s ms.", name, g(bwd[step.key] * 1000 / n))
    log.info("Average Forward pass: %s ms.", g(forward_total * 1000 / n))
    log.info("Average Backward pass: %s ms.", g(backward_total * 1000 / n))
    log.info("Average Forward-Backward: %s ms.", g(total / n))
    log.info("Total Time: %s ms.", g(total))
    log.info("*** Benchmark ends ***")
    _log_rates(net, step_flops(net, flops, needed), total / n, device, speed)
    return 0


def step_flops(net, forward_flops, needed):
    """FLOPs of one forward-backward: each layer's forward FLOPs (convolutions and matrix
    products), once more for its weights' gradient and once more for its bottoms' gradient,
    where these are computed."""
    total = 0
    for step in net.plan:
        grads = _learns(net.layers[step.key]) + any(needed[step.key])
        total += forward_flops.get(step.key, 0) * (1 + grads)
    return total


def _log_rates(net, flop, ms, device, speed):
    """Images/s and achieved GFLOP/s (convolutions and matrix products, forward and backward)
    beside the matrix-multiply ceiling measured now on this device in this precision."""
    batch = net.blob_shapes[net.plan[0].tops[0]][0] if net.plan and net.plan[0].tops else 1
    achieved = flop / ms / 1e6
    ceiling = matmul_ceiling(device, speed.dtype)
    log.info("Precision %s%s: %s images/s, %s GFLOP per forward-backward, %s GFLOP/s achieved; "
             "matrix-multiply ceiling %s GFLOP/s (%s%%).", speed.precision,
             ", compiled" if speed.compile else "", g(batch * 1000 / ms), g(flop / 1e9), g(achieved),
             g(ceiling), g(100 * achieved / ceiling))
