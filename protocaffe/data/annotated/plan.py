"""What the SSD fork's AnnotatedData layer does to one image, decided before any pixel is touched.

:meth:`Planner.plan` takes the random choices for one record in the order the fork's
``load_batch`` and DataTransformer take them, and follows the boxes through each step
(src/caffe/layers/annotated_data_layer.cpp, src/caffe/data_transformer.cpp):

1. distortion (encoded Datums only), from Caffe's stream: a coin for the order of the
   steps, then per step a coin against its ``*_prob`` and the amount; the channel order is
   shuffled by ``std::random_shuffle`` (the C library's ``rand()``);
2. expansion: a coin against ``expand_param.prob``, the ratio, then the top and left offsets
   (floored) of the image on its canvas; boxes follow;
3. the batch samplers' boxes (sampler.py), one of them picked by ``rand() % count``, and the
   crop; boxes are projected into it (the emit constraint applies here and at each step);
4. the transform: the mirror coin (the transformer's own stream), the interpolation
   (``resize_param.interp_mode``: one drawn with equal weights), salt-and-pepper pixels, the
   crop offsets (``crop_size``/``crop_h``/``crop_w``, TRAIN; the transformer's stream); boxes are
   mapped through the resize, projected into the crop, mirrored, and extrapolated.

Three streams are read: Caffe's prefetch-thread stream ``p`` (caffe_rng_uniform and
caffe_rng_rand), the transformer's ``t`` (its Rand), and ``rand`` (glibc's rand()).
The result, a :class:`Plan`, is carried out on the pixels by :func:`render`.
"""
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from protocaffe import caffe_random, schema
from protocaffe.data.annotated import boxes as bbox, pixels, sampler
from protocaffe.errors import CaffeError
from protocaffe.proto.forks import ssd_pb2

F = np.float32


@dataclass
class Record:
    """One AnnotatedDatum: its Datum, its size, and its boxes flattened in group order."""
    datum: object
    height: int
    width: int
    boxes: np.ndarray            # (N, 4) float32
    sizes: np.ndarray            # (N,) float32 stored sizes, NaN where none
    difficult: np.ndarray        # (N,) bool
    groups: np.ndarray           # (N,) int group_label
    instances: np.ndarray        # (N,) int instance_id
    typed: bool                  # the record has an annotation type (else its label is datum.label)


def parse_record(raw, source):
    """A serialized AnnotatedDatum as a :class:`Record` (the image itself is not decoded unless the
    Datum does not give its size)."""
    anno = ssd_pb2.AnnotatedDatum()
    try:
        anno.ParseFromString(raw)
    except Exception:
        raise CaffeError(f"{source}: a record is not a valid AnnotatedDatum ({len(raw)} bytes)") from None
    datum = anno.datum
    height, width = datum.height, datum.width
    if datum.encoded and not (height and width):
        height, width = pixels.decode(datum.data, cv2.IMREAD_UNCHANGED, source).shape[:2]
    rows = [(a.bbox, g.group_label, a.instance_id) for g in anno.annotation_group for a in g.annotation]
    coords = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b, _, _ in rows], np.float32).reshape(-1, 4)
    sizes = np.array([b.size if b.HasField("size") else np.nan for b, _, _ in rows], np.float32)
    return Record(datum, height, width, coords, sizes,
                  np.array([b.difficult for b, _, _ in rows], bool), np.array([g for _, g, _ in rows], np.int64),
                  np.array([i for _, _, i in rows], np.int64), anno.HasField("type"))


@dataclass
class Streams:
    """The random sources of one image: Caffe's prefetch-thread stream, the transformer's stream
    (positioned at this image's first draw), and the C library's rand()."""
    p: caffe_random.Stream
    t: caffe_random.Stream
    rand: caffe_random.CRand


@dataclass
class Plan:
    """Everything decided for one image; ``rows`` are its label rows without the item index:
    [group_label, instance_id, xmin, ymin, xmax, ymax, difficult]."""
    distort: list = None           # [(step, value)] or None
    expand: tuple = None           # (height, width, top, left) or None
    crop: tuple = None             # (x, y, w, h) pixel window of the sampled box, or None
    interpolation: int = cv2.INTER_LINEAR
    salt: tuple = None             # (columns, rows) of salt-and-pepper pixels, or None
    mirror: bool = False
    offset: tuple = (0, 0)         # (y, x) of the final crop
    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 7), np.float32))


def _uniform(stream, low, high):
    return caffe_random.uniform(stream, 1, low, high)[0]


class Planner:
    """The fork's per-image choices for one layer's transform_param and annotated_data_param."""

    def __init__(self, tp, adp, train):
        self.train = train
        self.mirror = tp.mirror
        self.crop_hw = (tp.crop_size, tp.crop_size) if tp.crop_size else \
            (schema.get(tp, "crop_h"), schema.get(tp, "crop_w"))
        self.resize = schema.get(tp, "resize_param") if schema.has(tp, "resize_param") else None
        self.noise = schema.get(tp, "noise_param") if schema.has(tp, "noise_param") else None
        self.distortion = schema.get(tp, "distort_param") if schema.has(tp, "distort_param") else None
        self.expansion = schema.get(tp, "expand_param") if schema.has(tp, "expand_param") else None
        self.emit = schema.get(tp, "emit_constraint") if schema.has(tp, "emit_constraint") else None
        self.samplers = [s for s in adp.batch_sampler if s.use_original_image]
        self.anno_type = adp.HasField("anno_type")

    def t_draws(self):
        """The transformer's draws per image: the mirror coin, then the crop's two offsets."""
        return int(self.mirror) + 2 * int(self.train and all(self.crop_hw))

    def plan(self, record, streams):
        plan = Plan()
        p = streams.p
        h, w = record.height, record.width
        boxes, sizes, keep = record.boxes, record.sizes, np.arange(len(record.boxes))
        if self.distortion is not None and record.datum.encoded:
            plan.distort = self._distort(p, streams.rand)
        if self.expansion is not None:
            plan.expand = self._expand(p, h, w)
            if plan.expand is not None:
                eh, ew, top, left = plan.expand
                frame = np.array([-F(left) / F(w), -F(top) / F(h), F(F(ew) - F(left)) / F(w),
                                  F(F(eh) - F(top)) / F(h)], np.float32)
                boxes, sizes, kept = self._follow(frame, boxes, sizes)
                keep, h, w = keep[kept], eh, ew
        if self.samplers:
            found = np.concatenate([sampler.generate(p, s, boxes, sizes) for s in self.samplers])
            if len(found):
                box = found[int(p.next()[0]) % len(found)]
                plan.crop = pixels.crop_window(box, h, w)
                boxes, sizes, kept = self._follow(bbox.clip(box[None])[0][0], boxes, sizes)
                keep, w, h = keep[kept], plan.crop[2], plan.crop[3]
        plan.mirror = bool(self.mirror and int(streams.t.next()[0]) % 2)
        if self.resize is not None and len(self.resize.interp_mode):
            plan.interpolation = self._interpolation(p)
        rh, rw = pixels.resized_size(self.resize, h, w) if self.resize is not None else (h, w)
        if self.noise is not None and self.noise.saltpepper:
            count = math.floor(F(F(F(self.noise.saltpepper_param.fraction) * F(rw)) * F(rh)))
            raw = p.next(2 * count).reshape(-1, 2)
            plan.salt = (raw[:, 0] % np.uint64(rw)).astype(np.int64), (raw[:, 1] % np.uint64(rh)).astype(np.int64)
        plan.offset = self._crop_offsets(streams.t, rh, rw)
        plan.rows = self._final_rows(record, keep, boxes, sizes, plan, (h, w), (rh, rw))
        return plan

    def _follow(self, frame, boxes, sizes):
        """TransformAnnotation without resize or mirror: the boxes kept in ``frame`` and projected into it."""
        meets = np.ones(len(boxes), bool) if self.emit is None else \
            bbox.meet_emit_constraint(frame, boxes, sizes, self.emit)
        projected, new_sizes, valid = bbox.project(frame, boxes)
        kept = np.flatnonzero(meets & valid)
        return projected[kept], new_sizes[kept], kept

    def _distort(self, p, rand):
        d = self.distortion
        coin = _uniform(p, 0, 1)
        order = ("brightness", "contrast", "saturation", "hue") if coin > F(0.5) else \
            ("brightness", "saturation", "hue", "contrast")
        bounds = {"brightness": (d.brightness_prob, -d.brightness_delta, d.brightness_delta),
                  "contrast": (d.contrast_prob, d.contrast_lower, d.contrast_upper),
                  "saturation": (d.saturation_prob, d.saturation_lower, d.saturation_upper),
                  "hue": (d.hue_prob, -d.hue_delta, d.hue_delta)}
        steps = []
        for step in order:
            prob, low, high = bounds[step]
            if _uniform(p, 0, 1) < F(prob):
                steps.append((step, _uniform(p, low, high)))
        if _uniform(p, 0, 1) < F(d.random_order_prob):
            order = [0, 1, 2]
            rand.shuffle(order)
            steps.append(("order", order))
        return steps

    def _expand(self, p, h, w):
        e = self.expansion
        if _uniform(p, 0, 1) > F(e.prob) or abs(e.max_expand_ratio - 1.0) < 1e-2:
            return None
        ratio = _uniform(p, 1, e.max_expand_ratio)
        eh, ew = int(F(h) * ratio), int(F(w) * ratio)
        top = math.floor(_uniform(p, 0, F(eh - h)))
        left = math.floor(_uniform(p, 0, F(ew - w)))
        return eh, ew, top, left

    def _interpolation(self, p):
        modes = self.resize.interp_mode
        cumulative = np.cumsum(np.full(len(modes), F(1) / F(len(modes)), np.float32), dtype=np.float32)
        value = _uniform(p, 0, cumulative[-1])
        index = min(int(np.searchsorted(cumulative, value, side="left")), len(modes) - 1)
        name = ssd_pb2.ResizeParameter.Interp_mode.Name(modes[index])
        return pixels.INTERPOLATIONS[name]

    def _crop_offsets(self, t, rh, rw):
        ch, cw = self.crop_hw
        if not (ch and cw):
            return 0, 0
        if rh < ch or rw < cw:
            raise CaffeError(f"an image of {rh}x{rw} (after resizing) is smaller than the crop {ch}x{cw}")
        if self.train:
            raw = t.next(2)
            return int(raw[0] % np.uint64(rh - ch + 1)), int(raw[1] % np.uint64(rw - cw + 1))
        return (rh - ch) // 2, (rw - cw) // 2

    def _final_rows(self, record, keep, boxes, sizes, plan, hw, resized):
        """The label rows after the transform: boxes resized, kept by the emit constraint in the
        final crop, projected into it, mirrored, extrapolated."""
        (h, w), (rh, rw) = hw, resized
        oh, ow = self.crop_hw if all(self.crop_hw) else resized
        y, x = plan.offset
        frame = np.array([F(x) / F(rw), F(y) / F(rh), F(x + ow) / F(rw), F(y + oh) / F(rh)], np.float32)
        if self.resize is not None:
            boxes = bbox.update_by_resize_policy(self.resize, w, h, boxes)
        meets = np.ones(len(boxes), bool) if self.emit is None else \
            bbox.meet_emit_constraint(frame, boxes, sizes, self.emit)
        projected, _, valid = bbox.project(frame, boxes)
        kept = np.flatnonzero(meets & valid)
        out = projected[kept]
        if plan.mirror:
            out = np.stack([F(1) - out[:, 2], out[:, 1], F(1) - out[:, 0], out[:, 3]], axis=1).astype(np.float32)
        if self.resize is not None:
            out = bbox.extrapolate(self.resize, h, w, frame, out)
        source = keep[kept]
        return np.column_stack([record.groups[source], record.instances[source], out,
                                record.difficult[source]]).astype(np.float32)
