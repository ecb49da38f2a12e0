"""One data layer's recipe for batch ``k``: read, crop, mirror, and (unless the device does it) normalize.

A :class:`Pipeline` is plain data plus a reader, made in the layer and
inherited by forked workers, which call :meth:`Pipeline.fill` on shared
buffers. ``raw=False`` fills the finished float32 batch; ``raw=True`` fills
the cropped, mirrored windows in their stored type (uint8 for images) and
leaves the float arithmetic to :func:`transform.apply` on the device.
"""
from dataclasses import dataclass

import numpy as np

from protocaffe.data import transform
from protocaffe.data.transform import Augment
from protocaffe.errors import CaffeError


@dataclass
class Pipeline:
    reader: object          # .batch(k) -> (list of (C, H, W) arrays, float32 labels); .close()
    source: str             # named in errors
    batch_size: int
    out_shape: tuple        # (C, h, w) of one transformed image
    dtype: np.dtype         # the stored images' type: uint8, or float32 for float_data Datums
    mean: np.ndarray        # float32 (C, H, W) or (C, 1, 1)
    scale: np.float32
    augment: Augment

    def batch_shape(self):
        return (self.batch_size,) + tuple(self.out_shape)

    def batch_dtype(self, raw):
        return self.dtype if raw else np.dtype(np.float32)

    def fill(self, k, out, raw):
        """Write batch ``k`` into ``out``; returns (labels, draws)."""
        images, labels = self.reader.batch(k)
        self._check(images)
        draws = self.augment.draw(k, np.array([img.shape[1:] for img in images], np.int64))
        c, h, w = self.out_shape
        full = transform.is_full(self.mean)
        for i, img in enumerate(images):
            win = transform.window(img, draws.offsets[i], draws.flips[i], h, w)
            if raw:
                out[i] = win
                continue
            mean = transform.window(self.mean, draws.offsets[i], draws.flips[i], h, w) if full else self.mean
            shift = None if draws.shifts is None else draws.shifts[i]
            transform.normalize_into(out[i], win, mean, shift, self.scale)
        return labels, draws

    def _check(self, images):
        c, h, w = self.out_shape
        for img in images:
            shape = img.shape
            if img.dtype != self.dtype:
                raise CaffeError(f"{self.source}: records hold {img.dtype} and {self.dtype} images; "
                                 "all must be stored alike")
            if shape[0] != c:
                raise CaffeError(f"{self.source}: an image has {shape[0]} channels, the first had {c}")
            if self.augment.crop and (shape[1] < h or shape[2] < w):
                raise CaffeError(f"{self.source}: an image of {shape[1]}x{shape[2]} is smaller than "
                                 f"crop_size {self.augment.crop}")
            if not self.augment.crop and shape[1:] != (h, w):
                raise CaffeError(f"{self.source}: images of {shape[1]}x{shape[2]} and {h}x{w} in one "
                                 "net need crop_size (or resizing when the data is made)")
            if transform.is_full(self.mean) and shape != self.mean.shape:
                raise CaffeError(f"{self.source}: an image of shape {shape} does not match the mean "
                                 f"file's {self.mean.shape}")
