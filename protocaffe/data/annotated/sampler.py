"""The SSD fork's batch samplers (src/caffe/util/sampler.cpp): random crop boxes that satisfy
an overlap constraint with the image's objects.

Each ``batch_sampler`` (with ``use_original_image``) makes up to ``max_trials`` boxes, stopping
once it has ``max_sample`` good ones. A trial draws, from Caffe's stream, a scale in
[min_scale, max_scale], an aspect ratio in [min_aspect_ratio, max_aspect_ratio] clamped to
[scale^2, 1 / scale^2], then the box's left and top edges; the box is kept when some object
passes the constraint. As in the fork only the first kind of constraint that is set counts
(jaccard overlap, else sample coverage, else object coverage): the fork's loop skips the later
kinds once the first has passed. Trials are computed a block at a time from the stream's outputs.
"""
import numpy as np

from protocaffe import caffe_random
from protocaffe.data.annotated import boxes as bbox
from protocaffe.errors import CaffeError

F = np.float32
BLOCK = 16
"""Trials computed at once (a sampler usually finds its box in a few)."""


def check(batch_sampler):
    """The CHECKs of the fork's SampleBBox, as a CaffeError naming the bad bounds."""
    s = batch_sampler.sampler
    if not (0 < s.min_scale <= s.max_scale <= 1):
        raise CaffeError(f"a batch_sampler needs 0 < min_scale <= max_scale <= 1, found {s.min_scale} "
                         f"and {s.max_scale}")
    if not (0 < s.min_aspect_ratio <= s.max_aspect_ratio < np.finfo(np.float32).max):
        raise CaffeError(f"a batch_sampler needs 0 < min_aspect_ratio <= max_aspect_ratio, found "
                         f"{s.min_aspect_ratio} and {s.max_aspect_ratio}")


def _trials(sampler, raw):
    """Boxes (T, 4) of the trials whose four draws are the outputs ``raw`` (T, 4), and for each
    output whether Boost accepts it (an output whose value rounds up to the open bound is skipped)."""
    scale, ok_scale = caffe_random.uniform_values(raw[:, 0], sampler.min_scale, sampler.max_scale)
    aspect, ok_aspect = caffe_random.uniform_values(raw[:, 1], sampler.min_aspect_ratio, sampler.max_aspect_ratio)
    square = scale.astype(np.float64) ** 2
    aspect = np.maximum(aspect, square.astype(np.float32))
    aspect = np.minimum(aspect, (1 / square).astype(np.float32))
    root = np.sqrt(aspect).astype(np.float32)
    width, height = (scale * root).astype(np.float32), (scale / root).astype(np.float32)
    # where the fork aborts (a box a float step wider than the image: "Check failed: a <= b"),
    # the edge is drawn in [0, 0]
    left, ok_left = caffe_random.uniform_values(raw[:, 2], F(0), np.maximum(F(1) - width, F(0)))
    top, ok_top = caffe_random.uniform_values(raw[:, 3], F(0), np.maximum(F(1) - height, F(0)))
    boxes = np.stack([left, top, (left + width).astype(np.float32), (top + height).astype(np.float32)], axis=1)
    return boxes, np.stack([ok_scale, ok_aspect, ok_left, ok_top], axis=1)


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
    from ``stream`` (a caffe_random.Stream) exactly what the fork draws."""
    limit = batch_sampler.max_sample if batch_sampler.HasField("max_sample") else None
    found, left = [], batch_sampler.max_trials
    while left > 0 and (limit is None or len(found) < limit):
        count = min(left, BLOCK)
        boxes, used_outputs = _block(stream, batch_sampler.sampler, count)
        good = _satisfied(boxes, objects, sizes, batch_sampler.sample_constraint)
        used = count
        if limit is not None:
            hits = np.flatnonzero(good)
            if len(found) + len(hits) >= limit:
                used = int(hits[limit - len(found) - 1]) + 1
        found.extend(boxes[:used][good[:used]])
        stream.raw(stream.position + int(used_outputs[4 * used - 1]) + 1, 0)
        left -= used
    return np.array(found, np.float32).reshape(-1, 4)


def _block(stream, sampler, count):
    """``count`` trials from the stream's next outputs, without moving it: (boxes (count, 4),
    the offset of the output each draw took, (4 * count,)). A rejected output is dropped and the
    draws after it move on by one."""
    pool = stream.peek(4 * count + 4)
    taken = np.arange(4 * count)
    while True:
        boxes, accepted = _trials(sampler, pool[taken].reshape(count, 4))
        rejected = np.flatnonzero(~accepted.reshape(-1))
        if not len(rejected):
            return boxes, taken
        taken = np.concatenate([np.delete(taken, rejected[0]), [taken[-1] + 1]])
        if taken[-1] >= len(pool):
            pool = stream.peek(2 * len(pool))
