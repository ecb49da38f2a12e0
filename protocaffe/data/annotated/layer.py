"""AnnotatedData, the SSD fork's data layer: an LMDB of AnnotatedDatum records, augmented for detection.

Tops: data (batch_size, C, h, w) float32 and label (1, 1, B, 8), one row per box of the batch,
``[item_id, group_label, instance_id, xmin, ymin, xmax, ymax, difficult]`` with coordinates in
fractions of the output image (one row of -1 when the batch has no box); records without an
annotation type give labels (batch_size,) from their Datums instead. (h, w) is the crop
(``crop_size`` or ``crop_h``/``crop_w``), else ``resize_param``'s size, else the first image's.

Each image goes through the fork's steps (plan.py): distortion, expansion, a crop from the batch
samplers, resize, noise, crop and mirror, then ``(x - mean) * scale`` in float32. Records are
read in key order and wrap around; in distributed training each rank reads every N-th record.

Random draws: in a net under Caffe's random seed (a solver's ``random_seed``, pycaffe's
``set_random_seed``) they are the fork's, value for value: the layer takes four values from
Caffe's stream at setup as the fork does (its DataReader's thread, InitRand twice when the
transformer draws, the prefetch thread), and each image's choices are drawn from the prefetch
thread's stream, the transformer's and the C library's rand(), in the fork's order. Those
draws depend on every image before (a sampler stops once it has its box), so each process
making batches replays the choices (not the pixels) of the batches before its own: any number
of workers give the same batches. Unseeded, batch k draws from streams seeded by (seed, k)
alone. Pixels match the fork's where OpenCV does (its JPEG codec re-encodes distorted,
expanded and cropped images, as the fork does).

Where protocaffe differs: FIT_SMALL_SIZE batches (batch_size 1, each image its own shape) are
made in the training thread; raw (not encoded) Datums are resized and cropped like encoded
ones (the fork aborts on a raw Datum with resize_param), while, as in the fork, they are not
distorted and their expansion canvas is filled with 32; ``rand_skip`` is ignored, as the fork's
DataReader ignores it.
"""
import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from protocaffe import schema
from protocaffe.data import transform
from protocaffe.data.annotated import pixels, sampler
from protocaffe.data.annotated.plan import Planner, Streams, parse_record
from protocaffe.data.db import Cursor, LmdbReader
from protocaffe.data.layers import _PrefetchingLayer, _seeds
from protocaffe import caffe_random
from protocaffe.errors import CaffeError
from protocaffe.fileio import datum_to_array
from protocaffe.layer_types.base import register
from protocaffe.proto import caffe_pb2

log = logging.getLogger("protocaffe")


@dataclass
class AnnotatedPipeline:
    """Batch ``k`` of an AnnotatedData layer: read, plan, render, normalize (see the module doc)."""
    reader: LmdbReader
    source: str
    batch_size: int
    out_shape: tuple        # (C, h, w)
    mean: np.ndarray        # float32 (C, h, w) or (C, 1, 1)
    scale: np.float32
    planner: Planner
    flag: int               # cv2.imdecode flag: as stored, or forced colour / gray
    canvas: np.ndarray      # the expansion canvas of encoded images, per channel
    typed: bool             # labels are box rows (else the Datums' labels)
    seed: int               # of the unseeded draws
    caffe_seeds: tuple = None   # (prefetch thread, transformer) seeds of the fork's draws
    _replay: tuple = field(default=None, repr=False)  # (next batch, Streams) of this process

    def batch_shape(self):
        return (self.batch_size,) + tuple(self.out_shape)

    def batch_dtype(self, raw):
        return np.dtype(np.uint8) if raw else np.dtype(np.float32)

    def fill(self, k, out, raw):
        """Write batch ``k`` into ``out`` ((N, C, h, w) uint8 windows if ``raw``, else the finished
        float32 batch); returns (labels, draws) as the Data layer's pipeline does."""
        images, labels = self.images(k)
        n = len(images)
        for j, img in enumerate(images):
            if img.shape != tuple(self.out_shape):
                raise CaffeError(f"{self.source}: an image came out {img.shape[1]}x{img.shape[2]} with "
                                 f"{img.shape[0]} channels, the first {self.out_shape[1]}x{self.out_shape[2]} "
                                 f"with {self.out_shape[0]}; images of different sizes need resize_param")
            if raw:
                out[j] = img
            else:
                transform.normalize_into(out[j], img, self.mean, None, self.scale)
        return labels, transform.Draws(np.zeros((n, 2), np.int64), np.zeros(n, bool))

    def images(self, k):
        """(the (C, h, w) uint8 images of batch ``k``, its labels)."""
        records = [parse_record(r, self.source) for r in self.reader.records(k)]
        plans = self._plans(k, records)
        images = [self._render(r, p) for r, p in zip(records, plans)]
        if not self.typed:
            return images, np.array([r.datum.label for r in records], np.float32)
        rows = [np.column_stack([np.full(len(p.rows), j, np.float32), p.rows]) for j, p in enumerate(plans)]
        rows = np.concatenate(rows) if rows else np.zeros((0, 8), np.float32)
        if not len(rows):
            rows = np.full((1, 8), -1, np.float32)
        return images, rows.astype(np.float32).reshape(1, 1, -1, 8)

    def _plans(self, k, records):
        if self.caffe_seeds is None:
            p, t, rand = np.random.SeedSequence([self.seed, k]).generate_state(3)
            streams = Streams(caffe_random.Stream(int(p)), caffe_random.Stream(int(t)),
                              caffe_random.CRand(int(rand) % (2**31 - 1) + 1))
            return [self.planner.plan(r, streams) for r in records]
        if self._replay is None or self._replay[0] > k:
            p_seed, t_seed = self.caffe_seeds
            self._replay = (0, Streams(caffe_random.Stream(p_seed), caffe_random.Stream(t_seed or 0),
                                       caffe_random.CRand()))
        done, streams = self._replay
        for skipped in range(done, k):  # the choices of batches other processes make
            for raw in self.reader.records(skipped):
                self.planner.plan(parse_record(raw, self.source), streams)
        self._replay = (k + 1, streams)
        return [self.planner.plan(r, streams) for r in records]

    def _render(self, record, plan):
        """The plan carried out on the record's pixels: a (C, h, w) uint8 image."""
        datum, encoded = record.datum, record.datum.encoded
        img = pixels.decode(datum.data, self.flag, self.source) if encoded else \
            np.ascontiguousarray(datum_to_array(datum).transpose(1, 2, 0))
        if img.dtype != np.uint8:
            raise CaffeError(f"{self.source}: a Datum holds float_data; AnnotatedData reads 8-bit images")
        if plan.distort is not None:
            img = pixels.reencode(pixels.distort(img, plan.distort))
        if plan.expand is not None:
            img = pixels.expand(img, *plan.expand, self.canvas if encoded else pixels.RAW_EXPAND_FILL)
            img = pixels.reencode(img) if encoded else img
        if plan.crop is not None:
            x, y, w, h = plan.crop
            img = img[y:y + h, x:x + w]
            img = pixels.reencode(img) if encoded else img
        planner = self.planner
        if planner.resize is not None:
            img = pixels.resize(img, planner.resize, plan.interpolation)
        if planner.noise is not None:
            img = pixels.noise(img, planner.noise, plan.salt)
        if all(planner.crop_hw):
            (y, x), (ch, cw) = plan.offset, planner.crop_hw
            img = img[y:y + ch, x:x + cw]
        if plan.mirror:
            img = img[:, ::-1]
        return np.ascontiguousarray(img.transpose(2, 0, 1))


@register
class AnnotatedData(_PrefetchingLayer):
    """The SSD fork's AnnotatedData layer (see the module docstring): ``data_param`` (source,
    batch_size, backend LMDB), ``transform_param`` with the fork's resize_param, distort_param,
    expand_param, noise_param, emit_constraint, crop_h/crop_w, and ``annotated_data_param``
    (batch_sampler, anno_type; label_map_file is not read, as in the fork)."""
    type = "AnnotatedData"

    def setup(self, bottom_shapes):
        dp, tp = self.param.data_param, self.param.transform_param
        adp = self.layer_param("annotated_data_param")
        try:
            self._check(dp, tp, adp)
            peek = Cursor(dp.source)
            first = parse_record(peek.next()[1], dp.source)
            peek.close()
            reader = LmdbReader(dp.source, dp.batch_size, 0, tp.force_color, tp.force_gray, self._shard())
        except CaffeError as e:
            raise self.error(str(e)) from None
        train = self.phase == caffe_pb2.TRAIN
        planner = Planner(tp, adp, train)
        flag = cv2.IMREAD_COLOR if tp.force_color else cv2.IMREAD_GRAYSCALE if tp.force_gray else cv2.IMREAD_UNCHANGED
        channels = pixels.decode(first.datum.data, flag, dp.source).shape[2] if first.datum.encoded \
            else first.datum.channels
        resized = pixels.resized_size(planner.resize, first.height, first.width) if planner.resize is not None \
            else (first.height, first.width)
        out_shape = (channels,) + tuple(planner.crop_hw if all(planner.crop_hw) else resized)
        if planner.t_draws() and not (tp.mirror or (train and tp.crop_size)) and self.ctx.caffes() is not None:
            raise self.error("crop_h/crop_w in TRAIN without mirror or crop_size: the fork's transformer "
                             "has no random generator for the crop then (it aborts)")
        mean = transform.load_mean(self, tp, out_shape)
        fill = np.zeros(channels, np.uint8)
        if len(tp.mean_value):
            fill = np.clip(np.rint(np.resize(np.array(tp.mean_value, np.float64), channels)), 0, 255)
        seed, = _seeds(self.ctx.generator, 1)
        caffe = self._caffe_draws(reader_draws=1)
        self.typed = first.typed or adp.HasField("anno_type")
        self.first_boxes = len(first.boxes)
        self.variable_shape = planner.resize is not None and planner.resize.resize_mode == planner.resize.FIT_SMALL_SIZE
        self._use_pipeline(AnnotatedPipeline(
            reader, dp.source, dp.batch_size, out_shape, mean, np.float32(tp.scale), planner, flag,
            fill.astype(np.uint8), self.typed, seed, caffe and (caffe[2], caffe[0])))

    def _check(self, dp, tp, adp):
        """The fork's CHECKs on the parameters, as one-line errors."""
        if dp.backend != caffe_pb2.DataParameter.LMDB:
            raise CaffeError("only the LMDB backend is supported; set backend: LMDB")
        if dp.batch_size <= 0:
            raise CaffeError("data_param.batch_size must be positive")
        if tp.force_color and tp.force_gray:
            raise CaffeError("cannot set both force_color and force_gray")
        if schema.has(tp, "resize_param"):
            r = schema.get(tp, "resize_param")
            if not (r.height > 0 and r.width > 0):
                raise CaffeError(f"resize_param needs height and width, found {r.height}x{r.width}")
            if r.resize_mode == r.FIT_SMALL_SIZE and (dp.batch_size != 1 or tp.mean_file):
                raise CaffeError("resize_mode FIT_SMALL_SIZE needs batch_size 1 and mean_value (not mean_file)")
        if schema.has(tp, "expand_param"):
            if schema.get(tp, "expand_param").max_expand_ratio <= 1:
                raise CaffeError("expand_param.max_expand_ratio must be greater than 1")
            if tp.mean_file:
                raise CaffeError("expand_param with a mean_file: the fork fills the canvas from a mean of the "
                                 "expanded size, which no file has; use mean_value")
        if schema.has(tp, "distort_param"):
            d = schema.get(tp, "distort_param")
            if d.brightness_delta < 0 or d.hue_delta < 0 or not (0 <= d.contrast_lower <= d.contrast_upper) \
                    or not (0 <= d.saturation_lower <= d.saturation_upper):
                raise CaffeError("distort_param needs brightness_delta, hue_delta >= 0 and "
                                 "0 <= lower <= upper for contrast and saturation")
        if schema.has(tp, "noise_param") and schema.get(tp, "noise_param").convert_to_lab:
            raise CaffeError("noise_param.convert_to_lab is not supported: the fork hands float Lab pixels "
                             "to a transform that reads bytes")
        for s in adp.batch_sampler:
            sampler.check(s)

    def top_shapes(self, bottom_shapes):
        n = self.pipeline.batch_size
        label = (1, 1, max(self.first_boxes, 1), 8) if self.typed else (n,)
        return [(n,) + tuple(self.pipeline.out_shape), label][:len(self.param.top)]

    def forward(self):
        if not self.variable_shape:
            return super().forward()
        images, labels = self.pipeline.images(self._next)  # FIT_SMALL_SIZE: one image of its own shape
        self._next += 1
        data = np.empty((1,) + images[0].shape, np.float32)
        transform.normalize_into(data[0], images[0], self.pipeline.mean, None, self.pipeline.scale)
        data = torch.from_numpy(data).to(self.mean.device, self.mean.dtype)
        if len(self.param.top) == 1:
            return data
        return data, transform.to_device(labels, self.mean.device).to(self.mean.dtype)
