"""The AlexNet paper's test-time methods, which Caffe lacks: ten-crop testing and ensembles.

Ten crops: the four corners and the centre of each uncropped image, and their
mirrors; the softmax outputs of the ten are averaged. Ensembles: the averaged
softmax outputs of several trained nets of one definition are averaged again.
Accuracy and loss are then computed from the averaged probabilities by the net's own
Accuracy and SoftmaxWithLoss layers, so their rules (ties, top_k, ignore_label) hold.
"""
import torch
import torch.nn.functional as F

from protocaffe.errors import CaffeError
from protocaffe.layer_types.loss import FLT_MIN
from protocaffe.net import CaffeNet
from protocaffe.proto import caffe_pb2

NUM_CROPS = 10


def ten_crops(images, crop):
    """(N, C, H, W) -> (N * 10, C, crop, crop): per image the corners and centre, then their mirrors."""
    n, c, h, w = images.shape
    if crop > h or crop > w:
        raise CaffeError(f"crop {crop} exceeds the image size {h}x{w}")
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), ((h - crop) // 2, (w - crop) // 2)]
    crops = torch.stack([images[:, :, y:y + crop, x:x + crop] for y, x in corners], dim=1)
    crops = torch.cat([crops, crops.flip(-1)], dim=1)
    return crops.reshape(n * NUM_CROPS, c, crop, crop)


def predict(nets, images, blob="prob", crop=None):
    """Averaged probabilities (N, K) of ``nets`` (one or several CaffeNets) on ``images``.

    With ``crop``, each image is evaluated on its ten crops. ``blob`` names the output
    to average: softmax probabilities (a deploy net's "prob"), or logits, which are
    passed through softmax first when ``blob`` is not produced by a Softmax layer.
    """
    nets = nets if isinstance(nets, (list, tuple)) else [nets]
    n = images.shape[0]
    inputs = ten_crops(images, crop) if crop else images
    crops = NUM_CROPS if crop else 1
    total = None
    with torch.no_grad():
        for net in nets:
            name = net.input_names[0]
            out = net(**{name: inputs})[blob]
            probs = out if _is_softmax(net, blob) else F.softmax(out, dim=1)
            probs = probs.reshape(n, crops, -1).mean(1)
            total = probs if total is None else total + probs
    return total / len(nets)


def _is_softmax(net, blob):
    return any(net.layers[s.key].type == "Softmax" and blob in s.tops for s in net.plan)


def _heads(net):
    """The Accuracy and SoftmaxWithLoss layers: what they read and what they report."""
    heads = [net.layers[s.key] for s in net.plan
             if net.layers[s.key].type in ("Accuracy", "SoftmaxWithLoss")]
    if not heads:
        raise CaffeError("oversample/ensemble testing needs a net with an Accuracy or SoftmaxWithLoss layer")
    return heads


def _source_net(net, clear_crop):
    """The net's data layers alone, with cropping and mirroring turned off for ten crops."""
    param = caffe_pb2.NetParameter()
    param.CopyFrom(net.param)
    del param.layer[:]
    crop = 0
    for lp in net.param.layer:
        if not len(lp.bottom) and lp.type != "Input":
            kept = param.layer.add()
            kept.CopyFrom(lp)
            crop = crop or lp.transform_param.crop_size
            if clear_crop:
                kept.transform_param.crop_size = 0
                kept.transform_param.mirror = False
    if not len(param.layer):
        raise CaffeError("oversample/ensemble testing needs a net with a data layer")
    return CaffeNet(param).to(net.ctx.device), crop


def score_averaged(nets, iterations, oversample):
    """Run ``iterations`` batches of the first net's data through every net, averaging softmax
    outputs over crops and nets; returns {output name: mean over batches}."""
    heads = _heads(nets[0])
    source, crop = _source_net(nets[0], oversample)
    if oversample and not crop:
        raise CaffeError("--oversample needs crop_size in the data layer's transform_param")
    data_name, label_name = heads[0].param.bottom[0], heads[0].param.bottom[1]
    producer = next(s for s in nets[0].plan if data_name in s.tops or label_name in s.tops)
    sums = {}
    with torch.no_grad():
        for _ in range(iterations):
            batch = source()
            images, labels = batch[producer.tops[0]], batch[producer.tops[1]]
            inputs = ten_crops(images, crop) if oversample else images
            repeat = NUM_CROPS if oversample else 1
            feed = {producer.tops[0]: inputs, producer.tops[1]: labels.repeat_interleave(repeat)}
            probs = None
            for net in nets:
                logits = net(**feed)[data_name]
                p = F.softmax(logits, dim=1).reshape(images.shape[0], repeat, -1).mean(1)
                probs = p if probs is None else probs + p
            probs = probs / len(nets)
            for name, value in score_heads(heads, probs, labels.long()).items():
                sums[name] = sums.get(name, 0.0) + value
    return {name: v / iterations for name, v in sums.items()}


def score_heads(heads, probs, labels):
    """{top: value} of each Accuracy / SoftmaxWithLoss layer run on averaged probabilities (N, K).

    Each layer computes by its own rules: Accuracy on the probabilities (top_k, ties counted
    against the label as Caffe's ``>=``, ignore_label skipped), SoftmaxWithLoss on their log
    (softmax(log p) = p; ignore_label and normalization as in the layer).
    """
    logs = torch.log(probs.clamp(min=FLT_MIN))
    out = {}
    for layer in heads:
        result = layer(probs if layer.type == "Accuracy" else logs, labels)
        out[layer.param.top[0]] = float(result[0] if isinstance(result, tuple) else result)
    return out
