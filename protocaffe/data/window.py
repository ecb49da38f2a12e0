"""WindowData: R-CNN's finetuning layer, windows of images warped to crop_size x crop_size.

The window file (``window_data_param.source``) repeats, per image::

    # image_index
    image_path          (joined to root_folder as text)
    channels height width
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines; corners inclusive, 0-based)

A window is foreground when ``overlap >= fg_threshold`` (its class must be
positive), background (label 0) when ``overlap < bg_threshold``, and unused
in between. A batch is ``batch_size - int(batch_size * fg_fraction)`` background
windows then the foreground ones, each drawn uniformly with replacement.
"""
import math

import cv2
import numpy as np
import torch

from protocaffe import fileio
from protocaffe.data import transform
from protocaffe.data.layers import _seeds
from protocaffe.errors import CaffeError
from protocaffe.layer_types.base import Layer, register


class _Tokens:
    """The whitespace-separated words of a text file, with their line numbers, read in order."""

    def __init__(self, path):
        try:
            with open(path) as f:
                self.items = [(n, w) for n, line in enumerate(f, 1) for w in line.split()]
        except OSError as e:
            raise CaffeError(f"cannot read the window file {path}: {e.strerror}") from None
        self.path, self.pos = path, 0

    def more(self):
        return self.pos < len(self.items)

    def next(self, kind, what):
        if not self.more():
            raise CaffeError(f"{self.path}: ends early, expected {what}")
        line, word = self.items[self.pos]
        self.pos += 1
        try:
            return kind(word)
        except ValueError:
            raise CaffeError(f"{self.path}:{line}: expected {what}, found '{word}'") from None


def read_window_file(path, root_folder, fg_threshold, bg_threshold):
    """(image paths, fg windows, bg windows); a window is (image, label, x1, y1, x2, y2)."""
    words = _Tokens(path)
    images, fg, bg = [], [], []
    while words.more():
        if words.next(str, "'#'") != "#":
            raise CaffeError(f"{path}:{words.items[words.pos - 1][0]}: expected '#' starting image {len(images)}")
        index = words.next(int, "an image index")
        if index != len(images):
            raise CaffeError(f"{path}: image indices must count 0, 1, 2, ...; found {index} for image {len(images)}")
        images.append(root_folder + words.next(str, "an image path"))
        channels = words.next(int, "the channel count")
        for what in ("the image height", "the image width"):  # unused: Caffe clips to the image read
            words.next(int, what)
        if channels != 3:
            raise CaffeError(f"{path}: image {index} has {channels} channels; WindowData reads colour images (3)")
        for _ in range(words.next(int, "the number of windows")):
            label, overlap = words.next(int, "a class index"), words.next(np.float32, "an overlap")
            box = tuple(words.next(int, "a window corner") for _ in range(4))
            if overlap >= fg_threshold:
                if label <= 0:
                    raise CaffeError(f"{path}: image {index} has a foreground window of class {label}; "
                                     "foreground classes must be positive")
                fg.append((index, label) + box)
            elif overlap < bg_threshold:
                bg.append((index, 0) + box)
    if not images:
        raise CaffeError(f"{path}: the window file is empty")
    return images, fg, bg


def _round(v):
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def window_geometry(box, crop, context_pad, square, image_hw, mirror):
    """Where window ``box`` = (x1, y1, x2, y2) goes, as Caffe's WindowDataLayer computes it in float32.

    Without context_pad or square mode the box itself is warped to crop x crop.
    Otherwise the box (made square first in square mode) is enlarged by
    crop / (crop - 2 context_pad) about its centre, clipped to the image, and the
    clipped part is warped to its share of the crop, the part outside the image
    left as zero padding (mirrored with the image). Returns the image region
    (x1, y1, x2, y2), the warped (height, width) and the offset (pad_h, pad_w).
    """
    x1, y1, x2, y2 = box
    if not (context_pad > 0 or square):
        return box, (crop, crop), (0, 0)
    f = np.float32
    context_scale = f(crop) / f(crop - 2 * context_pad)
    half_h, half_w = f((y2 - y1 + 1) / 2.0), f((x2 - x1 + 1) / 2.0)
    cx, cy = f(x1) + half_w, f(y1) + half_h
    if square:
        half_h = half_w = max(half_h, half_w)
    x1, x2 = _round(cx - half_w * context_scale), _round(cx + half_w * context_scale)
    y1, y2 = _round(cy - half_h * context_scale), _round(cy + half_h * context_scale)
    height, width = image_hw
    sx, sy = f(crop) / f(x2 - x1 + 1), f(crop) / f(y2 - y1 + 1)
    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
    pad_x2, pad_y2 = max(0, x2 - width + 1), max(0, y2 - height + 1)
    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
    out_h, out_w = _round(f(y2 - y1 + 1) * sy), _round(f(x2 - x1 + 1) * sx)
    pad_h = _round(f(pad_y1) * sy)
    pad_w = _round(f(pad_x2 if mirror else pad_x1) * sx)
    return (x1, y1, x2, y2), (min(out_h, crop - pad_h), min(out_w, crop - pad_w)), (pad_h, pad_w)


@register
class WindowData(Layer):
    """Windows of the images named in a window file, warped to crop_size: R-CNN's training data.

    Tops: data (batch_size, 3, crop_size, crop_size) float32 and label (batch_size,).
    Settings as Caffe reads them: ``crop_size``, ``mirror``, ``mean_file`` or
    ``mean_value`` from transform_param; ``scale``, thresholds, ``fg_fraction``,
    ``context_pad``, ``crop_mode`` (warp or square), ``root_folder``,
    ``cache_images`` from window_data_param. Each pixel placed is
    ``(pixel - mean) * scale``, the mean file read at the crop's position centred in
    it; padding stays 0. Mirroring is drawn in both phases, as in Caffe. Draws
    come from the net's seeded generator (not Caffe's, so the windows differ);
    batches are made in the training thread, not prefetched.
    """
    replays_caffe_draws = False  # its window draws are not Caffe's
    type = "WindowData"
    num_bottoms = 0
    num_tops = 2

    def setup(self, bottom_shapes):
        p, tp = self.param.window_data_param, self.param.transform_param
        if tp.crop_size <= 0:
            moved = " (window_data_param's crop_size is not read: set transform_param.crop_size)" \
                if p.crop_size else ""
            raise self.error(f"needs transform_param.crop_size > 0{moved}")
        if p.batch_size <= 0:
            raise self.error(f"window_data_param.batch_size must be positive, found {p.batch_size}")
        if p.crop_mode not in ("warp", "square"):
            raise self.error(f"crop_mode must be 'warp' or 'square', found '{p.crop_mode}'")
        if 2 * p.context_pad >= tp.crop_size:
            raise self.error(f"context_pad {p.context_pad} leaves nothing of crop_size {tp.crop_size}")
        try:
            self.images, self.fg, self.bg = read_window_file(p.source, p.root_folder, p.fg_threshold,
                                                             p.bg_threshold)
        except CaffeError as e:
            raise self.error(str(e)) from None
        if not self.fg or not self.bg:
            raise self.error(f"{p.source} has {len(self.fg)} foreground and {len(self.bg)} background "
                             "windows; WindowData needs both")
        self.crop, self.scale = tp.crop_size, np.float32(p.scale)
        self.mean, self.mean_off = self._mean(tp)
        self.rng = np.random.default_rng(_seeds(self.ctx.generator, 1)[0])
        self._cache = {} if p.cache_images else None

    def _mean(self, tp):
        """(mean, offset): a (3, H, W) mean file read from (offset, offset), or (3 or 1, 1, 1) values."""
        if not tp.mean_file or len(tp.mean_value):
            return transform.load_mean(self, tp, (3, self.crop, self.crop)), 0
        try:
            mean = fileio.read_mean(tp.mean_file)
        except CaffeError as e:
            raise self.error(f"mean file: {e}") from None
        off = (mean.shape[2] - self.crop) // 2
        if mean.shape[0] != 3 or off < 0 or mean.shape[1] < off + self.crop:
            raise self.error(f"mean file {tp.mean_file} has shape {mean.shape}; a centred "
                             f"{self.crop}x{self.crop} window of 3 channels must fit in it")
        return mean, off

    def top_shapes(self, bottom_shapes):
        n = self.param.window_data_param.batch_size
        return [(n, 3, self.crop, self.crop), (n,)]

    def _image(self, index):
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        img = cv2.imread(self.images[index], cv2.IMREAD_COLOR)
        if img is None:
            raise self.error(f"cannot read image {self.images[index]} (image {index} of "
                             f"{self.param.window_data_param.source})")
        if self._cache is not None:
            self._cache[index] = img
        return img

    def _window(self, out, window, mirror):
        """Warp ``window`` into ``out`` (3, crop, crop), zeros where nothing is placed."""
        p = self.param.window_data_param
        img = self._image(window[0])
        (x1, y1, x2, y2), (h, w), (ph, pw) = window_geometry(
            window[2:], self.crop, p.context_pad, p.crop_mode == "square", img.shape[:2], mirror)
        if not (0 <= x1 <= x2 < img.shape[1] and 0 <= y1 <= y2 < img.shape[0]) or h <= 0 or w <= 0:
            raise self.error(f"window {window[2:]} of image {self.images[window[0]]} ({img.shape[1]}x"
                             f"{img.shape[0]}) lies outside the image")
        warped = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (w, h), interpolation=cv2.INTER_LINEAR)
        if mirror:
            warped = warped[:, ::-1]
        mean = self.mean
        if mean.shape[1] > 1:
            top, left = self.mean_off + ph, self.mean_off + pw
            mean = mean[:, top:top + h, left:left + w]
        out[:, ph:ph + h, pw:pw + w] = (warped.transpose(2, 0, 1).astype(np.float32) - mean) * self.scale

    def forward(self):
        p = self.param.window_data_param
        n = p.batch_size
        num_fg = int(np.float32(n) * np.float32(p.fg_fraction))
        data = np.zeros((n, 3, self.crop, self.crop), np.float32)
        labels = np.zeros(n, np.float32)
        mirror = self.param.transform_param.mirror
        for i in range(n):
            pool = self.bg if i < n - num_fg else self.fg
            window = pool[int(self.rng.integers(2 ** 32)) % len(pool)]
            self._window(data[i], window, mirror and bool(self.rng.integers(2 ** 32) % 2))
            labels[i] = window[1]
        device = self.ctx.device
        return torch.from_numpy(data).to(device), torch.from_numpy(labels).to(device)
