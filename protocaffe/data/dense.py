"""SegNet's and ENet's DenseImageData: pairs of an image and its label image, for per-pixel labels."""
import numpy as np
import torch

from protocaffe.data import transform
from protocaffe.data.images import read_image
from protocaffe.errors import CaffeError
from protocaffe.layer_types.base import Layer, register
from protocaffe.proto.forks import segnet_pb2  # noqa: F401 (registers dense_image_data_param)


def read_pairs(path):
    """The (image, label image) names of a list file: whitespace-separated words taken two at a
    time, as the forks read it (``infile >> image >> label``)."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        raise CaffeError(f"{path}: cannot read the image list") from None
    if not words or len(words) % 2:
        raise CaffeError(f"{path}: expected 'image label' pairs, found {len(words)} words")
    return list(zip(words[::2], words[1::2]))


@register
class DenseImageData(Layer):
    """Image and label-image pairs listed in ``dense_image_data_param.source`` -> data (N, C, H, W)
    and label (N, 1, H', W'), both float32; a label pixel is its gray value as read.

    As in caffe-segnet and caffe-enet: paths are ``root_folder + name``; ``new_height`` /
    ``new_width`` resize the image bilinearly and the label with nearest neighbour, the label to
    1/``label_divide_factor`` of that size (caffe-enet's encoder training); ``mirror`` flips
    image and label together at random and ``crop_height`` / ``crop_width`` crop both at one
    random place, in every phase; transform_param's scale and mean (mean_value, or a mean_file
    of the data's size) apply to the image only, and its mirror and crop_size are refused as in
    caffe-segnet (they would move image and label apart). ``shuffle`` draws a new order at every
    pass, ``rand_skip`` starts at a random item below it. Unlike the forks with batch_size 1,
    every image must have one size. Batches are read when asked for (no prefetching), and the
    random draws are protocaffe's (from the net's seed), not Caffe's.
    """
    type = "DenseImageData"
    num_bottoms = 0
    num_tops = 2

    def setup(self, bottom_shapes):
        p, tp = self.layer_param("dense_image_data_param"), self.param.transform_param
        if (p.new_height > 0) != (p.new_width > 0) or (p.crop_height > 0) != (p.crop_width > 0):
            raise self.error("set new_height with new_width, and crop_height with crop_width")
        if p.batch_size <= 0:
            raise self.error("dense_image_data_param.batch_size must be positive")
        if tp.mirror or tp.crop_size:
            raise self.error("transform_param's mirror and crop_size would move the image and its label apart; "
                             "use dense_image_data_param's mirror, crop_height and crop_width")
        if p.label_divide_factor != 1 and (p.new_height == 0 or p.crop_height):
            raise self.error("label_divide_factor needs new_height and new_width, and no crop")
        self.p = p
        seed = int(torch.randint(0, 2**62, (), generator=self.ctx.generator))
        self.rng = np.random.default_rng(seed)
        try:
            self.pairs = read_pairs(p.source)
            self.order = self.rng.permutation(len(self.pairs)) if p.shuffle else np.arange(len(self.pairs))
            self.position = int(self.rng.integers(p.rand_skip)) if p.rand_skip else 0
            if self.position >= len(self.pairs):
                raise CaffeError(f"{p.source}: rand_skip drew {self.position}, the list has {len(self.pairs)} pairs")
            image, label = self._read(self.order[self.position])
        except CaffeError as e:
            raise self.error(str(e)) from None
        if p.crop_height > image.shape[1] or p.crop_width > image.shape[2]:
            raise self.error(f"crop {p.crop_height}x{p.crop_width} exceeds the image size "
                             f"{image.shape[1]}x{image.shape[2]}")
        height, width = (p.crop_height, p.crop_width) if p.crop_height else image.shape[1:]
        self.shape = (image.shape[0], height, width)
        self.label_shape = (1,) + ((height, width) if p.crop_height else label.shape[1:])
        self.mean = transform.load_mean(self, tp, self.shape)
        self.scale = np.float32(tp.scale)

    def _read(self, index):
        """(image (C, H, W) uint8, label (1, h, w) uint8) of pair ``index``, resized as asked."""
        p = self.p
        names = self.pairs[index]
        image = read_image(p.root_folder + names[0], p.new_height, p.new_width, p.is_color)
        label = read_image(p.root_folder + names[1], p.new_height // p.label_divide_factor,
                           p.new_width // p.label_divide_factor, False, nearest=True)
        for name, img in zip(names, (image, label)):
            if img is None:
                raise CaffeError(f"could not load {p.root_folder + name}")
        image, label = image.transpose(2, 0, 1), label.transpose(2, 0, 1)
        if p.label_divide_factor == 1 and image.shape[1:] != label.shape[1:]:
            raise CaffeError(f"image {names[0]} is {image.shape[1]}x{image.shape[2]} but its label {names[1]} is "
                             f"{label.shape[1]}x{label.shape[2]}")
        return image, label

    def top_shapes(self, bottom_shapes):
        n = self.p.batch_size
        return [(n,) + self.shape, (n,) + self.label_shape]

    def _next_pair(self):
        """The next pair, mirrored and cropped at random as the forks draw (mirror, then crop)."""
        p = self.p
        image, label = self._read(self.order[self.position])
        if image.shape[0] != self.shape[0] or (not p.crop_height and image.shape[1:] != self.shape[1:]):
            raise self.error(f"every image must have one size: {self.pairs[self.order[self.position]][0]} is "
                             f"{image.shape}, the first was {self.shape}")
        if p.mirror and self.rng.integers(2):
            image, label = image[:, :, ::-1], label[:, :, ::-1]
        if p.crop_height:
            y = int(self.rng.integers(image.shape[1] - p.crop_height + 1))
            x = int(self.rng.integers(image.shape[2] - p.crop_width + 1))
            image = image[:, y:y + p.crop_height, x:x + p.crop_width]
            label = label[:, y:y + p.crop_height, x:x + p.crop_width]
        self.position += 1
        if self.position == len(self.pairs):
            self.position = 0
            if p.shuffle:
                self.order = self.rng.permutation(len(self.pairs))
        return image, label

    def forward(self):
        data = np.empty((self.p.batch_size,) + self.shape, np.float32)
        labels = np.empty((self.p.batch_size,) + self.label_shape, np.float32)
        for i in range(self.p.batch_size):
            try:
                image, label = self._next_pair()
            except CaffeError as e:
                raise self.error(str(e)) from None
            transform.normalize_into(data[i], image, self.mean, None, self.scale)
            labels[i] = label
        return torch.from_numpy(data).to(self.ctx.device), torch.from_numpy(labels).to(self.ctx.device)
