"""Caffe's DataTransformer, split into its random part and its arithmetic.

For each image Caffe computes ``out = (x - mean) * scale`` in float32 over the
crop window, written mirrored when drawn. The mean file is full-size and
indexed at the uncropped position, so its window moves with the crop; mean
values are one per channel. Crops are random in TRAIN and centred in TEST;
mirroring is random whenever ``mirror`` is set, in both phases.

Here the draws for batch ``k`` come from ``(seed, k)`` alone, or, under a solver's
random_seed, from Caffe's own stream, addressed by position (:class:`Augment`); so any
number of workers give the same batches. The arithmetic exists for one
image in numpy (:func:`normalize_into`, run by the workers when the net is on
the CPU) and for a batch in torch (:func:`apply`, run on the net's device);
both do the same float32 operations in the same order, so they agree bit for
bit. With AlexNet's PCA lighting (``pca_file``, TRAIN only; :class:`Pca`) a
per-image colour shift is added to the pixel first: ``out = ((x + shift) - mean) * scale``.
"""
from dataclasses import dataclass

import numpy as np
import torch

from protocaffe import caffe_random, fileio
from protocaffe.errors import CaffeError


def load_mean(layer, tp, shape):
    """The mean to subtract as float32: (C, H, W) from mean_file, (C, 1, 1) from mean_value,
    or (1, 1, 1) zeros. Errors name the layer, the file and both shapes."""
    channels = shape[0]
    if tp.mean_file and len(tp.mean_value):
        raise layer.error("cannot specify mean_file and mean_value at the same time")
    if tp.mean_file:
        try:
            mean = fileio.read_mean(tp.mean_file)
        except CaffeError as e:
            raise layer.error(f"mean file: {e}") from None
        if mean.shape != tuple(shape):
            raise layer.error(f"mean file {tp.mean_file} has shape {mean.shape}, but the images are "
                              f"{tuple(shape)}")
        return np.ascontiguousarray(mean, np.float32)
    if len(tp.mean_value):
        values = list(tp.mean_value)
        if len(values) not in (1, channels):
            raise layer.error(f"specify 1 mean_value or {channels} (one per channel), found {len(values)}")
        return np.array(values * channels if len(values) == 1 else values, np.float32).reshape(-1, 1, 1)
    return np.zeros((1, 1, 1), np.float32)


def output_shape(crop, shape):
    """(C, H, W) of a transformed image: the crop window, or the whole image."""
    c, h, w = shape
    if crop and (crop > h or crop > w):
        raise CaffeError(f"crop_size {crop} exceeds the image size {h}x{w}")
    return (c, crop, crop) if crop else (c, h, w)


@dataclass(frozen=True)
class Pca:
    """AlexNet's lighting noise (``pca_file``, ``pca_std``; TRAIN only).

    ``eigenvalues`` (C,) and ``eigenvectors`` (C, C), one per row, are those of
    the channel covariance of intensities in [0, 1] (protocaffe.data.pca). Each
    image draws alpha ~ N(0, std) per component, and every pixel gets the shift
    ``255 * sum_i alpha_i * eigenvalue_i * eigenvector_i``, in pixel units.
    """
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    std: float

    def shifts(self, rng, n):
        """(n, C) float32 per-image colour shifts."""
        alphas = rng.normal(0.0, self.std, (n, len(self.eigenvalues)))
        return (255.0 * (alphas * self.eigenvalues) @ self.eigenvectors).astype(np.float32)


@dataclass(frozen=True)
class Draws:
    """The random choices for one batch: (N, 2) crop offsets (y, x), (N,) mirror flags,
    (N, C) colour shifts or None."""
    offsets: np.ndarray
    flips: np.ndarray
    shifts: np.ndarray = None


@dataclass(frozen=True)
class Augment:
    """Caffe's random choices for batch ``k``. With ``caffe_seed`` (a data layer in a net
    under a random seed, while its draws are still Caffe's) they are Caffe's own: its DataTransformer draws
    ``Rand(n) = mt19937() % n`` from an mt19937 seeded with ``caffe_seed``, per image a
    mirror flag (when ``mirror``) then the crop's row and column offsets (when cropping at
    random), image after image; batch k starts at image k * batch_size of that stream.
    Otherwise they come from ``(seed, k)``. Either way any number of workers give the same
    batches."""
    crop: int
    mirror: bool
    random_crop: bool
    seed: int
    pca: Pca = None
    caffe_seed: int = None

    def draw(self, k, sizes):
        """Draws for batch ``k`` whose images have the (H, W) ``sizes`` (an (N, 2) array)."""
        rng = np.random.default_rng([self.seed, k])
        n = len(sizes)
        room = sizes - self.crop + 1 if self.crop else np.ones((n, 2), np.int64)
        if self.caffe_seed is not None:
            flips, offsets = self._caffes(k, n, room)
        else:
            flips = rng.integers(0, 2, n).astype(bool) if self.mirror else np.zeros(n, bool)
            offsets = rng.integers(0, room) if self.crop and self.random_crop else (room - 1) // 2
        shifts = self.pca.shifts(rng, n) if self.pca is not None else None
        return Draws(offsets.astype(np.int64), flips, shifts)

    def _caffes(self, k, n, room):
        random_crop = bool(self.crop and self.random_crop)
        per_image = int(self.mirror) + 2 * random_crop
        if not per_image:
            return np.zeros(n, bool), (room - 1) // 2
        stream = _STREAMS.get(self.caffe_seed)
        if stream is None:
            stream = _STREAMS[self.caffe_seed] = caffe_random.Stream(self.caffe_seed)
        raw = stream.raw(k * n * per_image, n * per_image).reshape(n, per_image)
        flips = raw[:, 0] % 2 == 1 if self.mirror else np.zeros(n, bool)
        offsets = raw[:, -2:] % room.astype(np.uint64) if random_crop else (room - 1) // 2
        return flips, offsets.astype(np.int64)


_STREAMS = {}
"""This process's transformer streams by seed (a worker inherits the parent's at fork, then advances its own)."""


def window(img, offset, flip, height, width):
    """The (C, height, width) view of ``img`` at ``offset``, mirrored left-right if ``flip``."""
    y, x = int(offset[0]), int(offset[1])
    win = img[:, y:y + height, x:x + width]
    return win[:, :, ::-1] if flip else win


def normalize_into(out, win, mean, shift, scale):
    """``out = ((win + shift) - mean) * scale`` in float32, for one image (numpy).

    ``mean`` is the mean's window (already cropped and mirrored) or per-channel values.
    """
    if shift is None:
        np.subtract(win, mean, out=out, dtype=np.float32)
    else:
        np.add(win, shift.reshape(-1, 1, 1), out=out, dtype=np.float32)
        np.subtract(out, mean, out=out)
    if scale != 1:
        np.multiply(out, scale, out=out)


def is_full(mean):
    """Whether a mean is a full image (a mean file), rather than per-channel values."""
    return mean.shape[1:] != (1, 1)


def to_device(array, device):
    """A numpy array as a tensor on ``device``; to CUDA through pinned memory without waiting
    (a plain copy from pageable memory would wait for the device)."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def apply(batch, mean, scale, draws):
    """The batch version of :func:`normalize_into`, in torch on the batch's device.

    ``batch`` holds the (N, C, h, w) crop windows, already mirrored; ``mean`` is
    (C, H, W) (its windows are gathered here at ``draws``) or (C, 1, 1).
    """
    n, _, h, w = batch.shape
    x = batch.to(mean.dtype)
    if draws.shifts is not None:
        x = x + to_device(draws.shifts, x.device).to(x.dtype)[:, :, None, None]
    if is_full(mean):
        offsets = to_device(draws.offsets, x.device)
        flips = to_device(draws.flips, x.device)
        cols = torch.arange(w, device=x.device)
        rows = offsets[:, :1] + torch.arange(h, device=x.device)                    # (N, h)
        cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - cols, cols)     # (N, w)
        mean = mean[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)          # (N, C, h, w)
    x = x - mean
    return x * float(scale) if scale != 1 else x
