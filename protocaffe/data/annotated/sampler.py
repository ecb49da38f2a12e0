"""The SSD fork's batch samplers (src/caffe/util/sampler.cpp): random crop boxes that satisfy
an overlap constraint with the image's objects.

Each ``batch_sampler`` (with ``use_original_image``) makes up to ``max_trials`` boxes, stopping
once it has ``max_sample`` good ones. A trial draws, from Caffe's stream, a scale in
[min_scale, max_scale], an aspect ratio in [min_aspect_ratio, max_aspect_ratio] clamped to
[scale^2, 1 / scale^2], then the box's left and top edges; the box is kept when some object
passes the constraint. As in the fork only the first kind of constraint that is set counts
(jaccard overlap, else sample coverage, else object coverage): the fork's loop skips the later
kinds once the first has passed.
"""
import math

import numpy as np

from protocaffe.data.annotated import boxes as bbox
from protocaffe.errors import CaffeError

F = np.float32
ZERO, ONE, INF = F(0), F(1), F(np.inf)
SMALLEST = np.nextafter(ZERO, INF)
DIVISOR = F(F(4294967295.0) + F(1.0))
"""Boost's uniform_real divides an mt19937 output by this (2^32 in float32)."""
BLOCK = 16
"""The most trials made before checking them (a sampler usually finds its box in a few)."""


def check(batch_sampler):
    """The CHECKs of the fork's SampleBBox, as a CaffeError naming the bad bounds."""
    s = batch_sampler.sampler
    if not (0 < s.min_scale <= s.max_scale <= 1):
        raise CaffeError(f"a batch_sampler needs 0 < min_scale <= max_scale <= 1, found {s.min_scale} "
                         f"and {s.max_scale}")
    if not (0 < s.min_aspect_ratio <= s.max_aspect_ratio < np.finfo(np.float32).max):
        raise CaffeError(f"a batch_sampler needs 0 < min_aspect_ratio <= max_aspect_ratio, found "
                         f"{s.min_aspect_ratio} and {s.max_aspect_ratio}")


def _satisfied(boxes, objects, sizes, constraint):
    """SatisfySampleConstraint for each box (T, 4) against the objects (N, 4): the first kind of
    constraint set decides."""
    for kind, low, high in (("jaccard", "min_jaccard_overlap", "max_jaccard_overlap"),
                            ("sample", "min_sample_coverage", "max_sample_coverage"),
                            ("object", "min_object_coverage", "max_object_coverage")):
        has_low, has_high = constraint.HasField(low), constraint.HasField(high)
        if not (has_low or has_high):
            continue
        if kind == "jaccard":
            value = bbox.jaccard(boxes, objects, sizes)
        elif kind == "sample":
            value = bbox.coverage(boxes, objects)
        else:
            value = bbox.coverage(objects, boxes, sizes).T
        good = np.ones(value.shape, bool)
        if has_low:
            good &= ~(value < F(getattr(constraint, low)))
        if has_high:
            good &= ~(value > F(getattr(constraint, high)))
        return good.any(axis=1)
    return np.ones(len(boxes), bool)


def generate(stream, batch_sampler, objects, sizes):
    """GenerateSamples over the whole image: the good boxes (K, 4) of one batch_sampler, drawing
    from ``stream`` (a caffe_random.Stream) exactly what the fork draws. Trials are made a chunk
    at a time (4, 8, then 16) and checked against the objects together; the stream then moves to
    the end of the last trial the fork would have made."""
    limit = batch_sampler.max_sample if batch_sampler.HasField("max_sample") else None
    s = batch_sampler.sampler
    bounds = tuple(F(v) for v in (s.min_scale, s.max_scale, s.min_aspect_ratio, s.max_aspect_ratio))
    found, left, chunk = [], batch_sampler.max_trials, 4
    while left > 0 and (limit is None or len(found) < limit):
        boxes, ends = _trials(stream, bounds, min(left, chunk))
        good = _satisfied(boxes, objects, sizes, batch_sampler.sample_constraint)
        used = len(boxes)
        if limit is not None:
            hits = np.flatnonzero(good)
            if len(found) + len(hits) >= limit:
                used = int(hits[limit - len(found) - 1]) + 1
        found.extend(boxes[:used][good[:used]])
        stream.raw(stream.position + ends[used - 1], 0)
        left -= used
        chunk = min(2 * chunk, BLOCK)
    return np.array(found, np.float32).reshape(-1, 4)


def _trials(stream, bounds, count):
    """``count`` trials from the stream's next outputs, without moving it: (boxes (count, 4), for
    each trial the number of outputs read up to its end)."""
    size = 4 * count + 8
    while True:
        raw = stream.peek(size)
        units = list((raw.astype(np.float32) / DIVISOR).astype(np.float32))
        try:
            return _walk(units, bounds, count)
        except IndexError:  # outputs skipped ran past what was looked at
            size *= 2


def _next_up(value):
    """nextafter(value, +inf) of a float32 value >= 0 (value plus one unit in its last place)."""
    if not value:
        return SMALLEST
    _, exponent = math.frexp(value)
    return F(float(value) + math.ldexp(1.0, max(exponent - 24, -149)))


def _walk(units, bounds, count):
    """SampleBBox ``count`` times over Boost's unit values ``units`` (each output / 2^32 in float32),
    in float32 as the fork computes: a draw in [low, high] is ``unit * (top - low) + low`` with
    top = nextafter(high), an output whose value reaches top skipped; the aspect ratio clamped
    to [scale^2, 1 / scale^2] (computed in double); width scale * sqrt(ratio), height
    scale / sqrt(ratio); then the left and top edges in [0, 1 - width] and [0, 1 - height]
    (where the fork aborts on a box a float step wider than the image, [0, 0])."""
    min_scale, max_scale, min_ratio, max_ratio = bounds
    scale_top, ratio_top = np.nextafter(max_scale, INF), np.nextafter(max_ratio, INF)
    scale_span, ratio_span = scale_top - min_scale, ratio_top - min_ratio
    boxes, ends, at = [], [], 0
    for _ in range(count):
        while True:
            scale = units[at] * scale_span + min_scale
            at += 1
            if scale < scale_top:
                break
        while True:
            ratio = units[at] * ratio_span + min_ratio
            at += 1
            if ratio < ratio_top:
                break
        square = float(scale) * float(scale)
        ratio = min(max(ratio, F(square)), F(1 / square))
        root = F(math.sqrt(ratio))  # rounded once from double: float32's sqrt
        width, height = scale * root, scale / root
        corner = []
        for extent in (width, height):
            top = _next_up(max(ONE - extent, ZERO))
            while True:
                value = units[at] * top
                at += 1
                if value < top:
                    break
            corner.append(value)
        boxes.append((corner[0], corner[1], corner[0] + width, corner[1] + height))
        ends.append(at)
    return np.array(boxes, np.float32), ends
