"""``protocaffe test --model M --weights W [--iterations 50] [--gpu N] [--oversample] [--ensemble B,C]``

Caffe's ``caffe test``: runs the net in the TEST phase (or ``--phase TRAIN``) for the
given number of batches, logs every output per batch, then each output averaged over the batches.
``--oversample`` (ten crops) and ``--ensemble`` (more weights of the same net) are
the AlexNet paper's test-time methods; see protocaffe/evaluate.py.
"""
import numpy as np
import torch

from protocaffe import log as logs
from protocaffe.commands.common import (add_net_flags, add_speed_flags, check_iterations, device_for,
                                         parse_gpu, phase, speed_from, stages)
from protocaffe.errors import CaffeError
from protocaffe.evaluate import score_averaged
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log, g
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2


def score(net, iterations):
    """Each output's values summed over ``iterations`` forward passes, and the mean loss."""
    sums, loss = {}, 0.0
    with torch.no_grad():
        for i in range(iterations):
            blobs = net()
            loss += float(net.loss(blobs))
            k = 0
            for name in net.output_names:
                for v in np.atleast_1d(blobs[name].double().cpu().numpy()).ravel():
                    log.info("Batch %d, %s = %s", i, name, g(float(np.float32(v))))
                    sums[(k, name)] = sums.get((k, name), 0.0) + float(np.float32(v))
                    k += 1
    return sums, loss / iterations


def run(argv):
    f = add_net_flags(Flags("test", __doc__.splitlines()[0]))
    f.flag("oversample", False, "average the softmax over ten crops of each image (corners, centre, mirrors)")
    f.flag("ensemble", "", "more .caffemodel files of the same net, comma-separated, to average with --weights")
    args = add_speed_flags(f).parse(argv)
    logs.setup(args.log_dir or None)
    if not args.model:
        raise CaffeError("need a model definition to score: --model <file>")
    if not args.weights:
        raise CaffeError("need model weights to score: --weights <file.caffemodel>")
    check_iterations(args)
    device = device_for(parse_gpu(args.gpu))
    net = build_net(args.model, phase(args, caffe_pb2.TEST), level=args.level, stages=stages(args),
                    weights=args.weights, device=device)
    log.info("Running for %d iterations.", args.iterations)
    speed = speed_from(args)
    with speed.autocast(device):
        if args.oversample or args.ensemble:
            return _run_averaged(args, net, device, speed)
        net.keep_all_blobs = False
        sums, loss = score(speed.prepare(net), args.iterations)
    log.info("Loss: %s", g(loss))
    weights = net.loss_tops()
    for (_, name), total in sums.items():
        mean = float(np.float32(total / args.iterations))
        w = weights.get(name, 0.0)
        extra = f" (* {g(w)} = {g(w * mean)} loss)" if w else ""
        log.info("%s = %s%s", name, g(mean), extra)
    return 0


def _run_averaged(args, net, device, speed):
    members = [speed.prepare(m) for m in [net] + [
        build_net(args.model, net.phase, level=args.level, stages=stages(args), weights=w, device=device)
        for w in args.ensemble.split(",") if w]]
    log.info("Averaging the softmax of %d net(s)%s", len(members),
             " over ten crops of each image" if args.oversample else "")
    means = score_averaged(members, args.iterations, args.oversample)
    weights = net.loss_tops()
    for name, mean in means.items():
        w = weights.get(name, 0.0)
        extra = f" (* {g(w)} = {g(w * mean)} loss)" if w else ""
        log.info("%s = %s%s", name, g(mean), extra)
    return 0
