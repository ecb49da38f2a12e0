"""Image files named in a Caffe list file (``path label`` lines), as ImageData and convert_imageset read them."""
import os

import cv2
import numpy as np

from protocaffe import caffe_random
from protocaffe.errors import CaffeError


def read_list(path):
    """The ``(path, label)`` entries of a list file; the path is everything before the last space.

    Blank lines are skipped; a line without an integer label after its last
    space is an error naming the file and line.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        raise CaffeError(f"{path}: cannot read the image list") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, _, label = line.rstrip().rpartition(" ")
        if not name or not label.lstrip("+-").isdigit():
            raise CaffeError(f"{path}:{number}: expected 'path label', found '{line}'")
        entries.append((name, int(label)))
    if not entries:
        raise CaffeError(f"{path}: the image list is empty")
    return entries


def read_image(path, height, width, is_color, nearest=False, min_dim=0, max_dim=0):
    """An image file as (H, W, C) uint8 BGR (or gray), resized bilinearly (or, for label images,
    with nearest neighbour) to ``width`` x ``height`` when both are positive (Caffe's
    ReadImageToCVMat); None if it cannot be read.

    ``min_dim``/``max_dim`` (the SSD fork's, taking precedence) scale both sides by one float32
    factor so that the shorter side is at least ``min_dim`` and the longer at most ``max_dim``."""
    if not os.path.isfile(path):
        return None
    img = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if min_dim > 0 or max_dim > 0:
        small, large = min(img.shape[:2]), max(img.shape[:2])
        factor = np.float32(1)
        if min_dim > 0 and small < min_dim:
            factor = np.float32(np.float32(min_dim) / np.float32(small))
        if max_dim > 0 and int(np.float32(factor * np.float32(large))) > max_dim:
            factor = np.float32(np.float32(max_dim) / np.float32(large))
        if factor != 1:
            img = cv2.resize(img, (0, 0), fx=float(factor), fy=float(factor), interpolation=interpolation)
    elif height > 0 and width > 0:
        img = cv2.resize(img, (width, height), interpolation=interpolation)
    return img[:, :, None] if img.ndim == 2 else img


class ImageListReader:
    """Batch ``k`` of a list of image files: items ``start + k * batch_size + j`` in epoch order.

    Paths are ``root_folder + path`` (joined as text, as Caffe does). With
    ``shuffle_seed`` each pass over the list (epoch) has its own order, drawn
    from the seed and the epoch number, so batches depend only on ``k``; with
    ``caffe_shuffle_seed`` the orders are Caffe's (see :meth:`order`).
    """

    def __init__(self, entries, root_folder, height, width, is_color, batch_size, start, shuffle_seed,
                 caffe_shuffle_seed=None):
        self.entries, self.root = entries, root_folder
        self.height, self.width, self.is_color = height, width, is_color
        self.batch_size, self.start, self.shuffle_seed = batch_size, start, shuffle_seed
        self.caffe_shuffle_seed = caffe_shuffle_seed
        self._epoch, self._order, self._stream = None, None, None

    def order(self, epoch):
        """The entry indices of one pass over the list. With ``caffe_shuffle_seed``, Caffe's:
        its ImageData layer shuffles the list in place with caffe::shuffle from an mt19937 of
        that seed once at setup and again at every wrap, so pass e is the list shuffled e + 1
        times (replayed from the start when an earlier pass is asked for)."""
        if self._epoch == epoch:
            return self._order
        n = len(self.entries)
        if self.caffe_shuffle_seed is not None:
            if self._epoch is None or epoch < self._epoch:
                self._stream = caffe_random.Stream(self.caffe_shuffle_seed)
                self._order, self._epoch = caffe_random.shuffle(list(range(n)), self._stream), 0
            while self._epoch < epoch:
                self._order = caffe_random.shuffle(self._order, self._stream)
                self._epoch += 1
            return self._order
        self._order = np.arange(n) if self.shuffle_seed is None else \
            np.random.default_rng([self.shuffle_seed, epoch]).permutation(n)
        self._epoch = epoch
        return self._order

    def image(self, position):
        """(C, H, W) uint8 image and label at a position of the endless stream."""
        n = len(self.entries)
        name, label = self.entries[self.order(position // n)[position % n]]
        img = read_image(self.root + name, self.height, self.width, self.is_color)
        if img is None:
            raise CaffeError(f"could not load {self.root + name}")
        return np.ascontiguousarray(img.transpose(2, 0, 1)), label

    def batch(self, k):
        """(list of (C, H, W) uint8 arrays, float32 labels) for batch ``k``."""
        first = self.start + k * self.batch_size
        items = [self.image(first + j) for j in range(self.batch_size)]
        return [a for a, _ in items], np.array([label for _, label in items], np.float32)

    def close(self):
        pass
