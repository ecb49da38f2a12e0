"""Data layers: Data (LMDB), ImageData (a list of image files), MemoryData (arrays from Python).

Tops: data (N, C, H', W') float32 after Caffe's transformation, and label (N,)
float32. Batches are read and decoded by a background producer (see prefetch.py)
into uint8 arrays; the transformation runs on the device the net is on (the
layer's ``mean`` buffer moves with ``net.to(device)``), so on a GPU only bytes
cross the bus. A layer's cursor persists across forwards, wrapping at the end
of the data, as Caffe's does (a test net continues where its last round stopped).
"""
import os

import cv2
import numpy as np
import torch

from protocaffe.data import transform
from protocaffe.data.db import Cursor, decode_datum
from protocaffe.data.prefetch import Prefetcher
from protocaffe.errors import CaffeError
from protocaffe.layers.base import Layer, register
from protocaffe.proto import caffe_pb2


def _seed(generator):
    return int(torch.randint(0, 2**62, (1,), generator=generator))


class _BatchLayer(Layer):
    """Shared by the data layers: the mean buffer, the transformation, the prefetcher."""
    num_bottoms = 0
    num_tops = (1, 2)

    def _setup_transform(self, shape, batch_size):
        tp = self.param.transform_param
        if tp.force_color and tp.force_gray:
            raise self.error("force_color and force_gray cannot both be set")
        if tp.force_color:
            shape = (3,) + tuple(shape[1:])
        elif tp.force_gray:
            shape = (1,) + tuple(shape[1:])
        self.image_shape = tuple(shape)
        self.register_buffer("mean", transform.load_mean(self, tp, shape), persistent=False)
        try:
            self.out_shape = (batch_size,) + transform.output_shape(tp, shape)
        except CaffeError as e:
            raise self.error(str(e)) from None
        self.rng = np.random.default_rng(_seed(self.ctx.generator))
        self.pca = None
        if tp.pca_file:
            from protocaffe.data.pca import load_pca
            if shape[0] != 3:
                raise self.error(f"pca_file needs 3-channel images, found {shape[0]} channel(s)")
            try:
                self.pca = load_pca(tp.pca_file)
            except CaffeError as e:
                raise self.error(str(e)) from None

    def top_shapes(self, bottom_shapes):
        return [self.out_shape, (self.out_shape[0],)][:len(self.param.top)]

    def _transform(self, images, labels, offsets, flips, shift):
        device = self.mean.device
        batch = torch.from_numpy(images)
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        data = transform.apply(batch, self.mean, self.param.transform_param.scale,
                               self.param.transform_param.crop_size, offsets, flips, shift)
        if len(self.param.top) == 1:
            return data
        return data, torch.from_numpy(labels).to(device)

    def forward(self):
        return self._transform(*self.prefetcher.get())

    def close(self):
        """Stop the background readers (they also stop when the layer is garbage collected)."""
        self.prefetcher.close()


def _stack(items, source, expected):
    shapes = {a.shape for a, _ in items}
    if len(shapes) != 1 or shapes.pop() != expected:
        raise CaffeError(f"{source}: images in a batch must all be {expected} (use resize or crop_size); "
                         f"found {sorted({a.shape for a, _ in items})}")
    return np.stack([a for a, _ in items]), np.array([l for _, l in items], np.float32)


@register
class Data(_BatchLayer):
    """Batches of Datum records from an LMDB (``data_param.source``), in key order.

    ``rand_skip`` skips a random number of records first; ``prefetch`` batches are read ahead.
    """
    type = "Data"

    def setup(self, bottom_shapes):
        dp = self.param.data_param
        if dp.backend != caffe_pb2.DataParameter.LMDB:
            raise self.error("the LEVELDB backend is not supported; convert the data with "
                             "`protocaffe convert_imageset --backend lmdb` and set backend: LMDB")
        if not dp.batch_size:
            raise self.error("data_param.batch_size must be set and positive")
        tp = self.param.transform_param
        try:
            peek = Cursor(dp.source)
            first, _ = decode_datum(peek.next()[1], dp.source, tp.force_color, tp.force_gray)
            peek.close()
        except CaffeError as e:
            raise self.error(str(e)) from None
        self._setup_transform(first.shape, dp.batch_size)
        skip = int(self.rng.integers(0, dp.rand_skip)) if dp.rand_skip else 0
        readers = min(READERS, max(1, os.cpu_count() // 2))
        producers = [_lmdb_producer(dp.source, dp.batch_size, skip + k * dp.batch_size,
                                    (readers - 1) * dp.batch_size, tp, self.phase, self.image_shape,
                                    np.random.default_rng(_seed(self.ctx.generator)), self.pca)
                     for k in range(readers)]
        self.prefetcher = RoundRobin([Prefetcher(p, max(1, dp.prefetch // readers)) for p in producers])


READERS = 4
"""Reader threads per Data layer (at most half the cores): LMDB reads, Datum parsing and
copies release the GIL, so they overlap. Reader k reads batches k, k + R, k + 2R, ...,
so the record order is Caffe's whatever R is."""


class RoundRobin:
    """Batches from several prefetchers in turn."""

    def __init__(self, prefetchers):
        self.prefetchers, self.next = prefetchers, 0

    def get(self):
        item = self.prefetchers[self.next].get()
        self.next = (self.next + 1) % len(self.prefetchers)
        return item

    def close(self):
        for p in self.prefetchers:
            p.close()


def _lmdb_producer(source, batch_size, skip, stride, tp, phase, shape, rng, pca):
    """Reads a batch, then passes over ``stride`` records (those the other readers take)."""
    cursor = None

    def produce():
        nonlocal cursor
        if cursor is None:  # opened in the reader thread, which alone uses it
            cursor = Cursor(source)
            cursor.skip(skip)
        else:
            cursor.skip(stride)
        images = np.empty((batch_size,) + tuple(shape), np.uint8)
        labels = np.empty(batch_size, np.float32)
        for i in range(batch_size):
            img, labels[i] = decode_datum(cursor.next()[1], source, tp.force_color, tp.force_gray)
            if img.shape != images.shape[1:]:
                raise CaffeError(f"{source}: images in a batch must all be {tuple(shape)} (use resize "
                                 f"or crop_size); found {img.shape}")
            images[i] = img
        return (images, labels) + transform.draw(tp, phase, batch_size, shape, rng, pca)
    return produce


def read_image(path, height, width, is_color):
    """An image file as a (C, H, W) uint8 BGR (or gray) array, resized bilinearly if asked."""
    img = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise CaffeError(f"{path}: cannot read this image")
    if height and width:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    img = img[:, :, None] if img.ndim == 2 else img
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def read_list(path):
    """A Caffe list file: one ``relative/path label`` per line (the path may hold spaces)."""
    entries = []
    try:
        lines = open(path).read().splitlines()
    except OSError:
        raise CaffeError(f"{path}: cannot read the image list") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, _, label = line.rstrip().rpartition(" ")
        if not name or not label.lstrip("-").isdigit():
            raise CaffeError(f"{path}:{number}: expected 'path label', found '{line}'")
        entries.append((name, int(label)))
    if not entries:
        raise CaffeError(f"{path}: the image list is empty")
    return entries


@register
class ImageData(_BatchLayer):
    """Batches of image files listed in ``image_data_param.source`` (``path label`` lines).

    ``root_folder`` prefixes each path; ``new_height``/``new_width`` resize; ``shuffle``
    reshuffles at every pass; ``is_color`` false reads gray.
    """
    type = "ImageData"

    def setup(self, bottom_shapes):
        p = self.param.image_data_param
        if not p.batch_size:
            raise self.error("image_data_param.batch_size must be positive")
        try:
            entries = read_list(p.source)
            first = read_image(os.path.join(p.root_folder, entries[0][0]), p.new_height, p.new_width,
                               p.is_color)
        except CaffeError as e:
            raise self.error(str(e)) from None
        self._setup_transform(first.shape, p.batch_size)
        tp, phase, shape, rng, pca = (self.param.transform_param, self.phase, self.image_shape, self.rng,
                                      self.pca)
        order = list(range(len(entries)))
        if p.shuffle:
            rng.shuffle(order)
        state = {"pos": int(rng.integers(0, p.rand_skip)) if p.rand_skip else 0}

        def produce():
            items = []
            for _ in range(p.batch_size):
                if state["pos"] >= len(order):
                    state["pos"] = 0
                    if p.shuffle:
                        rng.shuffle(order)
                name, label = entries[order[state["pos"]]]
                state["pos"] += 1
                items.append((read_image(os.path.join(p.root_folder, name), p.new_height, p.new_width,
                                         p.is_color), label))
            images, labels = _stack(items, p.source, shape)
            return (images, labels) + transform.draw(tp, phase, p.batch_size, shape, rng, pca)
        self.prefetcher = Prefetcher(produce, 4)


@register
class MemoryData(_BatchLayer):
    """Batches from numpy arrays given with ``set_input_arrays(data, labels)`` (pycaffe's name).

    data (M, channels, height, width) with M a multiple of batch_size; labels (M,).
    Batches are taken in order, wrapping around. The transformation applies.
    """
    type = "MemoryData"

    def setup(self, bottom_shapes):
        p = self.param.memory_data_param
        if not (p.batch_size and p.channels and p.height and p.width):
            raise self.error("memory_data_param needs batch_size, channels, height and width")
        self.batch_size = p.batch_size
        self._setup_transform((p.channels, p.height, p.width), p.batch_size)
        self.data = None

    def set_input_arrays(self, data, labels):
        data = np.asarray(data)
        labels = np.asarray(labels, np.float32).reshape(-1)
        if data.ndim != 4 or tuple(data.shape[1:]) != self.image_shape:
            raise self.error(f"data must be (M,) + {self.image_shape}, found {data.shape}")
        if len(data) % self.batch_size or len(labels) != len(data):
            raise self.error(f"needs M a multiple of batch_size {self.batch_size} and one label per "
                             f"item, found {len(data)} items and {len(labels)} labels")
        self.data, self.labels, self.pos = data, labels, 0

    reset = set_input_arrays

    def forward(self):
        if self.data is None:
            raise self.error("no data: call set_input_arrays(data, labels) first")
        sl = slice(self.pos, self.pos + self.batch_size)
        self.pos = (self.pos + self.batch_size) % len(self.data)
        drawn = transform.draw(self.param.transform_param, self.phase, self.batch_size,
                               self.image_shape, self.rng, self.pca)
        return self._transform(np.ascontiguousarray(self.data[sl]), self.labels[sl], *drawn)

    def close(self):
        pass
