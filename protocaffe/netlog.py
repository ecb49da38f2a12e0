"""Caffe's log lines for building a net and copying weights into it, in net.cpp's words.

    Initializing net from parameters:        (then the filtered net as text)
    Creating Layer conv1
    conv1 <- data
    conv1 -> conv1                           (``(in-place)`` when the top is its bottom)
    Setting up conv1
    Top shape: 10 96 55 55 (2904000)
    Memory required for data: 11616000       (running total of top counts * 4 bytes)
    conv1 needs backward computation.        (last layer first, as Caffe walks back from the loss)
    This network produces output prob
    Network initialization done.
    Ignoring source layer fc8                (CopyTrainedLayersFrom: a weights layer not in the net)

All at INFO, as Caffe logs them (``Copying source layer`` is a DLOG in Caffe, absent from
release logs, and so absent here). The lines cost nothing unless INFO logging is on.
"""
import logging
import math
from dataclasses import dataclass, field

from protocaffe.log import LOGGER as log, g
from protocaffe.proto import caffe_pb2

BYTES_PER_VALUE = 4  # Caffe counts memory as float blobs


def _has_inner_layer(layer):
    """SoftmaxWithLoss and InfogainLoss make a Softmax, Scale with bias_term a Bias, through
    Caffe's registry, which logs ``Creating layer NAME`` once more during setup."""
    return layer.type in ("SoftmaxWithLoss", "InfogainLoss") or \
        (layer.type == "Scale" and layer.param.scale_param.bias_term)


@dataclass
class _Entry:
    """One layer as Caffe's Net::Init sees it, after InsertSplits."""
    name: str
    bottoms: list
    tops: list
    loss_weights: list
    lr_mults: list = field(default_factory=list)
    propagate_down: list = field(default_factory=list)
    inner_layer: bool = False  # built with a helper layer from Caffe's registry (logged again)
    split: bool = False  # a Split layer inserted by InsertSplits (no plan step of its own)


def caffe_layers(net):
    """The net's layers with Caffe's Split layers inserted (InsertSplits): a top read by more
    than one layer, or read and weighted in the loss, feeds a ``{blob}_{layer}_{j}_split``
    layer whose tops ``..._split_{k}`` replace it in each reader."""
    steps = [(net.layers[s.key], s) for s in net.plan]
    last_top, source, count, weight = {}, {}, {}, {}
    for i, (layer, step) in enumerate(steps):
        for j, b in enumerate(step.bottoms):
            source[i, j] = last_top[b]
            count[last_top[b]] = count.get(last_top[b], 0) + 1
        for j, t in enumerate(step.tops):
            last_top[t] = (i, j)
        for j, w in enumerate(list(layer.param.loss_weight)[:len(step.tops)]):
            weight[last_top[step.tops[j]]] = w
            count[last_top[step.tops[j]]] = count.get(last_top[step.tops[j]], 0) + (w != 0)
    entries, used = [], {}
    for i, (layer, step) in enumerate(steps):
        bottoms = list(step.bottoms)
        for j, b in enumerate(bottoms):
            src = source[i, j]
            if count[src] > 1:
                bottoms[j] = f"{b}_{steps[src[0]][0].name}_{src[1]}_split_{used.get(src, 0)}"
                used[src] = used.get(src, 0) + 1
        specs = list(layer.param.param)
        entry = _Entry(layer.name, bottoms, list(step.tops), list(step.loss_weights),
                       [specs[k].lr_mult if k < len(specs) else caffe_pb2.ParamSpec().lr_mult
                        for k in range(len(layer.blob_names))], list(layer.param.propagate_down),
                       _has_inner_layer(layer))
        entries.append(entry)
        for j, t in enumerate(step.tops):
            n, w = count.get((i, j), 0), weight.get((i, j), 0.0)
            if n > 1:
                entries.append(_Entry(f"{t}_{layer.name}_{j}_split", [t],
                                      [f"{t}_{layer.name}_{j}_split_{k}" for k in range(n)],
                                      [w] + [0.0] * (n - 1), split=True))
                if w:  # Caffe clears the layer's own loss weights: it falls back to its type's default
                    entry.loss_weights = [float(layer.is_loss and k == 0) for k in range(len(step.tops))]
                    used[i, j] = used.get((i, j), 0) + 1
    return entries


def log_net(net):
    """Log the construction of a built CaffeNet (its param, plan and blob_shapes) as Net::Init does."""
    if not log.isEnabledFor(logging.INFO):
        return
    log.info("Initializing net from parameters: \n%s", net.param)
    entries = caffe_layers(net)
    shapes = dict(net.blob_shapes)
    memory = 0
    for e in entries:
        log.info("Creating layer %s", e.name)
        log.info("Creating Layer %s", e.name)
        for bottom in e.bottoms:
            log.info("%s <- %s", e.name, bottom)
        for i, top in enumerate(e.tops):
            in_place = i < len(e.bottoms) and e.bottoms[i] == top
            log.info("%s -> %s%s", e.name, top, " (in-place)" if in_place else "")
        if e.inner_layer:
            log.info("Creating layer %s", e.name)
        log.info("Setting up %s", e.name)
        for top, weight in zip(e.tops, e.loss_weights):
            shape = shapes.setdefault(top, shapes[e.bottoms[0]] if e.bottoms else ())
            count = math.prod(shape)
            log.info("Top shape: %s(%d)", "".join(f"{d} " for d in shape), count)
            if weight:
                log.info("    with loss weight %s", g(weight))
            memory += count
        log.info("Memory required for data: %d", memory * BYTES_PER_VALUE)
    for e, needed, _ in reversed(need_backward(entries)):
        log.info("%s %s backward computation.", e.name, "needs" if needed else "does not need")
    for name in net.output_names:
        log.info("This network produces output %s", name)
    log.info("Network initialization done.")


def need_backward(entries, force_backward=False):
    """[(entry, needs backward, [each bottom needs a gradient])] by Caffe's two passes: forward, a
    layer needs backward when a bottom does or a parameter has lr_mult != 0; backward, it keeps
    it only if it feeds a loss and not every top was cut off by the consumers' ``propagate_down:
    false``. Under ``force_backward`` every layer runs backward and every bottom gets a gradient
    (the loss layers' labels are left to the layers, which give them none)."""
    blob_needs, rows = set(), []
    for e in entries:
        bottom_needs = [e.propagate_down[i] if e.propagate_down else b in blob_needs
                        for i, b in enumerate(e.bottoms)]
        needs = any(b in blob_needs for b in e.bottoms) or any(m != 0 for m in e.lr_mults)
        if needs:
            blob_needs.update(e.tops)
        rows.append([e, needs, bottom_needs])
    under_loss, skipped = set(), set()
    for row in reversed(rows):
        e, needs, bottom_needs = row
        contributes = any(w or t in under_loss for t, w in zip(e.tops, e.loss_weights))
        if needs and all(t in skipped for t in e.tops):
            needs, bottom_needs = False, [False] * len(bottom_needs)
        row[1] = needs and contributes
        for bottom, bottom_need in zip(e.bottoms, bottom_needs):
            if contributes:
                under_loss.add(bottom)
            if not (contributes and bottom_need):
                skipped.add(bottom)
        row[2] = [contributes and need for need in bottom_needs]
    if force_backward:
        return [(e, True, [True] * len(e.bottoms)) for e, _, _ in rows]
    return [tuple(row) for row in rows]


def log_ignored(source, net_layer_names):
    """``Ignoring source layer X`` for each layer of a weights file that the net lacks."""
    for layer in source.layer:
        if layer.name not in net_layer_names:
            log.info("Ignoring source layer %s", layer.name)
