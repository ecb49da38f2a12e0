"""``protocaffe time --model M [--iterations 50] [--gpu N]``: Caffe's ``caffe time``.

Times each layer's forward and backward, running the net layer by layer as
Caffe does (each layer's backward on its own, fed the gradients of the layers
above), and prints the averages in Caffe's words.
"""
import time

import torch

from protocaffe import log as logs
from protocaffe.commands.common import add_net_flags, device_for, parse_gpu, phase, stages
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log, g
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_layers(net, device, times):
    """Forward layer by layer; each layer's inputs are fresh leaves so its backward runs alone."""
    blobs, record = {}, []
    for step in net.plan:
        layer = net.layers[step.key]
        inputs = [blobs[b].detach().requires_grad_(blobs[b].is_floating_point()) for b in step.bottoms]
        _sync(device)
        start = time.perf_counter()
        out = layer(*inputs)
        _sync(device)
        times[step.key] += time.perf_counter() - start
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        blobs.update(zip(step.tops, out))
        record.append((step, inputs, out))
    return record


def backward_layers(net, record, device, times):
    """Backward in reverse layer order, accumulating each blob's gradient from its consumers.

    The loss tops are seeded with their loss weights; a net without a loss (a deploy
    net) has its outputs seeded with ones, as Caffe's force_backward would time it.
    """
    grads = {}
    seeds = net.loss_tops() or {name: 1.0 for name in net.output_names}
    for step, inputs, outs in reversed(record):
        pairs = []
        for top, out in zip(step.tops, outs):
            grad = grads.pop(top, None)
            w = seeds.pop(top, 0.0)
            if w:
                seed = torch.full_like(out, w)
                grad = seed if grad is None else grad + seed
            if grad is not None and out.requires_grad:
                pairs.append((out, grad))
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
    args = add_net_flags(Flags("time", __doc__.splitlines()[0])).parse(argv)
    logs.setup(args.log_dir or None)
    if not args.model:
        raise CaffeError("need a model definition to time: --model <file>")
    device = device_for(parse_gpu(args.gpu))
    net = build_net(args.model, phase(args, caffe_pb2.TRAIN), level=args.level, stages=stages(args),
                    weights=args.weights or None, device=device)
    fwd = {s.key: 0.0 for s in net.plan}
    bwd = {s.key: 0.0 for s in net.plan}
    log.info("Performing Forward")
    record = forward_layers(net, device, dict(fwd))
    loss = sum(float(w * out.detach().sum()) for step, _, outs in record
               for out, w in zip(outs, step.loss_weights) if w)
    log.info("Initial loss: %s", g(loss))
    log.info("Performing Backward")
    backward_layers(net, record, device, dict(bwd))
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", args.iterations)
    total_start = time.perf_counter()
    forward_total = backward_total = 0.0
    for j in range(args.iterations):
        it_start = time.perf_counter()
        before = sum(fwd.values())
        record = forward_layers(net, device, fwd)
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
    return 0
