"""Caffe's DataTransformer for whole batches, on the CPU or the GPU.

For each image: out = (x - mean) * scale over the crop window, mirrored when
drawn. The mean file is indexed at the uncropped position (a full-size mean
subtracted before cropping); mean values are per channel. Crop offsets are
random in TRAIN and centred in TEST; mirroring is random whenever ``mirror`` is
set, in both phases, as in Caffe. The random draws happen where the batch is
read (see :func:`draw`); :func:`apply` is pure tensor indexing, so the CPU and
GPU give the same numbers.
"""
import numpy as np
import torch

from protocaffe import io
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2


def load_mean(layer, tp, shape):
    """The mean to subtract as a float32 tensor: (C, H, W) from mean_file, (C, 1, 1) from
    mean_value, or a single 0. Errors name the layer and what did not fit."""
    channels, height, width = shape
    if tp.mean_file and len(tp.mean_value):
        raise layer.error("give mean_file or mean_value, not both")
    if tp.mean_file:
        mean = io.read_mean(tp.mean_file)
        if mean.shape != (channels, height, width):
            raise layer.error(f"mean file {tp.mean_file} has shape {mean.shape}, but the images are "
                              f"{(channels, height, width)}")
        return torch.from_numpy(mean.copy())
    if len(tp.mean_value):
        values = list(tp.mean_value)
        if len(values) not in (1, channels):
            raise layer.error(f"needs 1 or {channels} mean_value, found {len(values)}")
        values = values * channels if len(values) == 1 else values
        return torch.tensor(values, dtype=torch.float32).view(channels, 1, 1)
    return torch.zeros(1, 1, 1)


def output_shape(tp, shape):
    """(C, H, W) after cropping."""
    c, h, w = shape
    if tp.crop_size:
        if tp.crop_size > h or tp.crop_size > w:
            raise CaffeError(f"crop_size {tp.crop_size} exceeds the image size {h}x{w}")
        return (c, tp.crop_size, tp.crop_size)
    return (c, h, w)


def draw(tp, phase, n, shape, rng, pca=None):
    """Per-image crop offsets (n, 2), mirror flags (n,) and, with PCA colour augmentation in
    TRAIN, colour shifts (n, C) in pixel units (else None)."""
    _, h, w = shape
    crop = tp.crop_size
    flips = rng.integers(0, 2, n).astype(bool) if tp.mirror else np.zeros(n, bool)
    if not crop:
        offsets = np.zeros((n, 2), np.int64)
    elif phase == caffe_pb2.TRAIN:
        offsets = np.stack([rng.integers(0, h - crop + 1, n), rng.integers(0, w - crop + 1, n)], 1)
    else:
        offsets = np.tile([(h - crop) // 2, (w - crop) // 2], (n, 1))
    shift = None
    if pca is not None and phase == caffe_pb2.TRAIN:
        from protocaffe.data.pca import colour_shift
        shift = colour_shift(pca[0], pca[1], tp.pca_std, n, rng)
    return offsets, flips, shift


def apply(batch, mean, scale, crop, offsets, flips, shift=None):
    """Transform a (N, C, H, W) uint8 or float batch on its device: take the crop windows
    (mirrored where flagged) of the image and of the mean, subtract, add the colour
    shift if any, scale. On a GPU one gather does every image at once; on the CPU a
    loop of slices is several times faster. Both give the same numbers."""
    if batch.device.type == "cpu":
        return _apply_sliced(batch, mean, scale, crop, offsets, flips, shift)
    n, c, h, w = batch.shape
    device = batch.device
    ch, cw = (crop, crop) if crop else (h, w)
    offsets = torch.as_tensor(offsets, device=device)
    flips = torch.as_tensor(flips, device=device)
    ar_h = torch.arange(ch, device=device)
    ar_w = torch.arange(cw, device=device)
    rows = offsets[:, :1] + ar_h                                          # (N, ch)
    cols = offsets[:, 1:] + torch.where(flips[:, None], cw - 1 - ar_w, ar_w)  # (N, cw)
    ni = torch.arange(n, device=device)[:, None, None, None]
    ci = torch.arange(c, device=device)[None, :, None, None]
    r, q = rows[:, None, :, None], cols[:, None, None, :]
    x = batch[ni, ci, r, q].float()
    if mean.shape[1:] == (1, 1):
        x = x - mean
    else:
        x = x - mean[ci[0], r, q]
    if shift is not None:
        x = x + torch.as_tensor(shift, device=device)[:, :, None, None]
    return x * scale if scale != 1 else x


def _apply_sliced(batch, mean, scale, crop, offsets, flips, shift):
    n, c, h, w = batch.shape
    ch, cw = (crop, crop) if crop else (h, w)
    full_mean = mean.shape[1:] != (1, 1)
    out = torch.empty((n, c, ch, cw), dtype=torch.float32)
    for i, ((y, x), flip) in enumerate(zip(np.asarray(offsets).tolist(), np.asarray(flips).tolist())):
        m = mean[:, y:y + ch, x:x + cw] if full_mean else mean
        v = batch[i, :, y:y + ch, x:x + cw].float() - m
        out[i] = v.flip(-1) if flip else v
    if shift is not None:
        out += torch.as_tensor(shift)[:, :, None, None]
    return out.mul_(scale) if scale != 1 else out
