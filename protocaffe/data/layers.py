"""Data layers: Data (an LMDB of Datums), ImageData (a list of image files), MemoryData (arrays).

Tops: data (N, C, h, w) float32 after Caffe's transformation (see transform.py)
and label (N,) float32.

Data and ImageData read, decode, crop and mirror in worker processes
(prefetch.py; ``data_param.prefetch`` batches ahead). On the CPU the workers
also subtract the mean and scale, and the layer only copies the finished
batch; on a GPU (found from the ``mean`` buffer, which ``net.to(device)``
moves) the workers hand over uint8 windows, which go up through pinned memory
and are normalized on the device. Both give the same float32 numbers.
Workers start at the first forward; ``PROTOCAFFE_DATA_WORKERS=0`` (or
``layer.workers = 0``) makes batches in the training thread instead.

A layer's position persists across forwards and wraps at the end of the
data, as Caffe's does (a test net continues where its last round stopped).
Random choices come from the net's seeded generator: same seed, same batches.

In distributed training (a torch.distributed process group is up), a TRAIN
Data layer on rank r of N reads records r, r + N, r + 2N, ... of its database,
as Caffe's DataLayer does with several solvers; TEST layers read everything,
and so does ImageData, as Caffe's (each rank in its own shuffled order).
"""
import functools
import logging

import numpy as np
import torch

from protocaffe import distributed
from protocaffe.data import transform
from protocaffe.data.db import Cursor, LmdbReader, decode_datum
from protocaffe.data.images import ImageListReader, read_list
from protocaffe.data.pca import read_pca
from protocaffe.data.pipeline import Pipeline
from protocaffe.data.prefetch import Synchronous, WorkerPool, default_workers
from protocaffe.errors import CaffeError
from protocaffe.layer_types.base import Layer, register
from protocaffe.proto import caffe_pb2

log = logging.getLogger("protocaffe")


class _PrefetchingLayer(Layer):
    """What Data and ImageData share: the transformation, the mean buffer, the batch source."""
    num_bottoms = 0
    num_tops = (1, 2)

    def _caffe_draws(self, setup_draws=0, reader_draws=0):
        """Take this layer's values from Caffe's global stream (when it is still Caffe's) in
        the order Caffe's setup takes them: ``reader_draws`` values (the SSD fork's DataReader
        starts a thread when the layer is made), InitRand's value (when the transformer draws
        at all), ``setup_draws`` values (ImageData's shuffle seed and skip), a second InitRand's
        (BasePrefetchingDataLayer calls it again: that seed is the one used), and the
        prefetch thread's seed (base_data_layer.cpp, image_data_layer.cpp; checked against
        `caffe train` logs, tests/data/caffe_data_draws). Returns (the transformer's seed or
        None, [the setup values], the prefetch thread's seed), or None without Caffe's stream."""
        stream = self.ctx.caffes()
        if stream is None:
            return None
        tp = self.param.transform_param
        draws = bool(tp.mirror or (self.phase == caffe_pb2.TRAIN and tp.crop_size))
        values = [int(v) for v in stream.next(reader_draws + 2 * draws + setup_draws + 1)][reader_draws:]
        return (values[draws + setup_draws] if draws else None), values[draws:draws + setup_draws], values[-1]

    def _setup_pipeline(self, reader, first, batch_size, source, seed, caffe_seed=None):
        tp = self.param.transform_param
        mean = transform.load_mean(self, tp, first.shape)
        try:
            out_shape = transform.output_shape(tp.crop_size, first.shape)
        except CaffeError as e:
            raise self.error(str(e)) from None
        train = self.phase == caffe_pb2.TRAIN
        pca = self._pca(tp, first.shape[0]) if train and tp.pca_file else None
        augment = transform.Augment(tp.crop_size, tp.mirror, train, seed, pca, caffe_seed)
        self._use_pipeline(Pipeline(reader, source, batch_size, out_shape, first.dtype, mean,
                                    np.float32(tp.scale), augment))

    def _use_pipeline(self, pipeline):
        """Serve batches from ``pipeline`` (its ``fill(k, out, raw)`` makes batch k), from the first."""
        self.pipeline = pipeline
        self.register_buffer("mean", torch.from_numpy(pipeline.mean), persistent=False)
        self.workers = default_workers()
        #: None: normalize on the device unless it is the CPU; True/False force it (tests, benchmarks)
        self.device_transform = None
        self._next = 0            # the next batch index
        self._batches = None      # the running WorkerPool or Synchronous source
        self._started = None      # (raw, workers) it was started with
        log.info("output data size: %s", ",".join(map(str, self.pipeline.batch_shape())))

    def _pca(self, tp, channels):
        try:
            values, vectors = read_pca(tp.pca_file)
        except CaffeError as e:
            raise self.error(f"pca_file: {e}") from None
        if len(values) != channels:
            raise self.error(f"pca_file {tp.pca_file} is for {len(values)} channels, the images have {channels}")
        return transform.Pca(values, vectors, tp.pca_std)

    def top_shapes(self, bottom_shapes):
        n = self.pipeline.batch_size
        return [(n,) + tuple(self.pipeline.out_shape), (n,)][:len(self.param.top)]

    def forward(self):
        device = self.mean.device
        raw = device.type != "cpu" if self.device_transform is None else self.device_transform
        if self._batches is None or self._started != (raw, self.workers):
            self._start(raw)
        try:
            (labels, draws), batch = self._batches.get(pin=raw and device.type == "cuda")
        except CaffeError as e:
            self.close()
            raise self.error(str(e)) from None
        self._next += 1
        if raw:
            data = transform.apply(batch.to(device, non_blocking=True), self.mean, self.pipeline.scale, draws)
        else:
            data = batch.to(device, self.mean.dtype)
        if len(self.param.top) == 1:
            return data
        return data, transform.to_device(labels, device).to(self.mean.dtype)

    def _start(self, raw):
        self.close()
        self.pipeline.reader.close()
        fill = functools.partial(self.pipeline.fill, raw=raw)
        shape, dtype = self.pipeline.batch_shape(), self.pipeline.batch_dtype(raw)
        if self.workers > 0:
            self._batches = WorkerPool(fill, shape, dtype, self._next, self.workers,
                                       max(1, self.param.data_param.prefetch))
        else:
            self._batches = Synchronous(fill, shape, dtype, self._next)
        self._started = (raw, self.workers)

    def _shard(self):
        """(rank, ranks) whose share of the records this layer reads: Caffe's (solver_rank, solver_count)."""
        if self.phase == caffe_pb2.TRAIN:
            return distributed.solver_rank(), distributed.solver_count()
        return 0, 1

    def close(self):
        """Stop the workers; the next forward starts them again where this layer stands."""
        if self._batches is not None:
            self._batches.close()
        self._batches = None


def _seeds(generator, n):
    return [int(s) for s in torch.randint(0, 2**62, (n,), generator=generator)]


@register
class Data(_PrefetchingLayer):
    """Datum records of an LMDB (``data_param.source``), in key order, ``batch_size`` at a time.

    Tops: data (batch_size, C, crop_size or H, crop_size or W) with C, H, W
    from the first record, and optionally label (batch_size,). Raw and encoded
    Datums (decoded as stored, or with ``force_color``/``force_gray``, which as
    in Caffe do nothing to raw ones). ``rand_skip`` is ignored, as Caffe 1.0's
    DataLayer ignores it (it reads from the first record; the skip went with Caffe's
    DataReader rewrite, and ImageData still has it). Only the LMDB backend is
    read (Caffe's schema defaults to LEVELDB: prototxts say ``backend: LMDB``).
    """
    type = "Data"

    def setup(self, bottom_shapes):
        dp, tp = self.param.data_param, self.param.transform_param
        if dp.backend != caffe_pb2.DataParameter.LMDB:
            raise self.error("the LEVELDB backend is not supported; convert the data to LMDB "
                             "(`protocaffe convert_imageset --backend lmdb ...`) and set backend: LMDB")
        if dp.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive")
        if tp.force_color and tp.force_gray:
            raise self.error("cannot set both force_color and force_gray")
        try:
            peek = Cursor(dp.source)
            record = peek.next()[1]
            peek.close()
            first, _ = decode_datum(record, dp.source, tp.force_color, tp.force_gray)
            seed, = _seeds(self.ctx.generator, 1)
            reader = LmdbReader(dp.source, dp.batch_size, 0, tp.force_color, tp.force_gray, self._shard())
        except CaffeError as e:
            raise self.error(str(e)) from None
        if (tp.force_color or tp.force_gray) and not caffe_pb2.Datum.FromString(record).encoded:
            log.warning("layer '%s': force_color and force_gray apply only to encoded Datums", self.name)
        caffe = self._caffe_draws()
        self._setup_pipeline(reader, first, dp.batch_size, dp.source, seed, caffe and caffe[0])


@register
class ImageData(_PrefetchingLayer):
    """Image files listed in ``image_data_param.source`` (``path label`` lines), read with OpenCV.

    Tops: data (batch_size, C, h, w) as Data's, from the first image, and label
    (batch_size,). Unlike Caffe with batch_size 1, every image must then have
    one size (or crop_size must cut them to one). Paths are ``root_folder + path``; ``new_height``/``new_width`` resize
    bilinearly; ``is_color: false`` reads gray; ``shuffle`` draws a new order at
    every pass; ``rand_skip`` starts at a random item below it.
    """
    type = "ImageData"
    num_tops = 2

    def setup(self, bottom_shapes):
        p = self.param.image_data_param
        if (p.new_height > 0) != (p.new_width > 0):
            raise self.error("new_height and new_width must be set together")
        if p.batch_size <= 0:
            raise self.error("image_data_param.batch_size must be positive")
        seed, shuffle_seed, skip_seed = _seeds(self.ctx.generator, 3)
        caffe = self._caffe_draws(bool(p.shuffle) + bool(p.rand_skip))
        caffe_shuffle_seed = caffe[1][0] if caffe and p.shuffle else None
        try:
            entries = read_list(p.source)
            if caffe and p.rand_skip:  # Caffe: caffe_rng_rand() % rand_skip, after the shuffle's seed
                skip = caffe[1][-1] % p.rand_skip
            else:
                skip = int(np.random.default_rng(skip_seed).integers(p.rand_skip)) if p.rand_skip else 0
            if skip >= len(entries):
                raise CaffeError(f"{p.source}: rand_skip drew {skip}, but the list has {len(entries)} images")
            reader = ImageListReader(entries, p.root_folder, p.new_height, p.new_width, p.is_color,
                                     p.batch_size, skip, shuffle_seed if p.shuffle else None, caffe_shuffle_seed)
            first, _ = reader.image(skip)
        except CaffeError as e:
            raise self.error(str(e)) from None
        if self._shard()[0] > 0 and not p.shuffle and not p.rand_skip:
            log.warning("layer '%s': every rank reads the whole list; shuffle or rand_skip is "
                        "recommended with several ranks (as Caffe says)", self.name)
        self._setup_pipeline(reader, first, p.batch_size, p.source, seed, caffe and caffe[0])


@register
class MemoryData(Layer):
    """Batches of arrays handed over from Python with :meth:`reset` (pycaffe's ``set_input_arrays``).

    data (M, channels, height, width) and labels (M,), M a multiple of
    ``batch_size``, taken in order and wrapping around. As in Caffe the arrays
    are not transformed, and a forward before any arrays were given is an error.
    """
    type = "MemoryData"
    num_bottoms = 0
    num_tops = 2

    def setup(self, bottom_shapes):
        p = self.param.memory_data_param
        if not (p.batch_size > 0 and p.channels > 0 and p.height > 0 and p.width > 0):
            raise self.error("memory_data_param needs batch_size, channels, height and width, all positive")
        self.batch_size = p.batch_size
        self.shape = (p.channels, p.height, p.width)
        self.register_buffer("data", None, persistent=False)
        self.register_buffer("labels", None, persistent=False)
        self.pos = 0

    def top_shapes(self, bottom_shapes):
        return [(self.batch_size,) + self.shape, (self.batch_size,)]

    def reset(self, data, labels):
        """Serve ``data`` (M, C, H, W) and ``labels`` (M,) from the start (Caffe's Reset)."""
        data = np.asarray(data, np.float32)
        labels = np.asarray(labels, np.float32).reshape(-1)
        if data.ndim != 4 or tuple(data.shape[1:]) != self.shape:
            raise self.error(f"data must have shape (M,) + {self.shape}, found {data.shape}")
        if len(data) == 0 or len(data) % self.batch_size or len(labels) != len(data):
            raise self.error(f"needs M a positive multiple of batch_size {self.batch_size} and one label "
                             f"per item, found {len(data)} items and {len(labels)} labels")
        if self.param.HasField("transform_param"):
            log.warning("layer '%s': MemoryData does not transform arrays given to reset()", self.name)
        self.data = torch.tensor(data, device=self.ctx.device)
        self.labels = torch.tensor(labels, device=self.ctx.device)
        self.pos = 0

    set_input_arrays = reset

    def forward(self):
        if self.data is None:
            raise self.error("no arrays to serve: call reset(data, labels) (set_input_arrays) first")
        sl = slice(self.pos, self.pos + self.batch_size)
        self.pos = (self.pos + self.batch_size) % len(self.data)
        return self.data[sl], self.labels[sl]
