"""Image files named in a Caffe list file (``path label`` lines), as ImageData and convert_imageset read them."""
import os

import cv2
import numpy as np

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


def read_image(path, height, width, is_color):
    """An image file as (H, W, C) uint8 BGR (or gray), resized bilinearly to ``width`` x ``height``
    when both are positive (Caffe's ReadImageToCVMat); None if it cannot be read."""
    if not os.path.isfile(path):
        return None
    img = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None
    if height > 0 and width > 0:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return img[:, :, None] if img.ndim == 2 else img


class ImageListReader:
    """Batch ``k`` of a list of image files: items ``start + k * batch_size + j`` in epoch order.

    Paths are ``root_folder + path`` (joined as text, as Caffe does). With
    ``shuffle_seed`` each pass over the list (epoch) has its own order, drawn
    from the seed and the epoch number, so batches depend only on ``k``.
    """

    def __init__(self, entries, root_folder, height, width, is_color, batch_size, start, shuffle_seed):
        self.entries, self.root = entries, root_folder
        self.height, self.width, self.is_color = height, width, is_color
        self.batch_size, self.start, self.shuffle_seed = batch_size, start, shuffle_seed
        self._epoch, self._order = None, None

    def order(self, epoch):
        """The entry indices of one pass over the list."""
        if self._epoch != epoch:
            n = len(self.entries)
            self._order = (np.arange(n) if self.shuffle_seed is None else
                           np.random.default_rng([self.shuffle_seed, epoch]).permutation(n))
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
