"""pycaffe's ``caffe.io``: images in, blobs out, and the proto <-> array conversions.

Images are numpy arrays (H, W, K), float32 in [0, 1], RGB, as scikit-image
reads them; a net's input is (K, H, W), often BGR in [0, 255] less a mean.
:class:`Transformer` goes from one to the other and back. Resampling is
scikit-image's (``skimage.transform.resize``), as in pycaffe, so resized
images match pycaffe's to float32 precision. scikit-image is imported on first
use, so ``import protocaffe`` stays quick.
"""
import numpy as np

from protocaffe import fileio
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2

# ---- proto <-> array ---------------------------------------------------------


def blobproto_to_array(blob, return_diff=False):
    """A BlobProto's data (or diff, with ``return_diff``) as an array of the blob's shape."""
    return fileio.blob_to_array(blob, diff=return_diff)


def array_to_blobproto(arr, diff=None):
    """An array (and optional diff of the same shape) as a BlobProto with ``shape`` and float data."""
    as_float = (lambda a: None if a is None else np.asarray(a, dtype=np.float32))
    return fileio.array_to_blob(as_float(arr), as_float(diff))


def arraylist_to_blobprotovector_str(arraylist):
    """Arrays serialized as one BlobProtoVector (the bytes pycaffe passes around)."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data):
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A (C, H, W) array as a Datum: uint8 as raw bytes, anything else as float_data.

    As in pycaffe, ``label`` is written only when given and ``encoded`` is left unset.
    """
    datum = fileio.array_to_datum(arr, 0 if label is None else label)
    datum.ClearField("encoded")
    if label is None:
        datum.ClearField("label")
    return datum


def datum_to_array(datum):
    """A Datum's image as a (C, H, W) array (the label stays in ``datum.label``)."""
    return fileio.datum_to_array(datum)


# ---- images ------------------------------------------------------------------


def load_image(filename, color=True):
    """Read an image as float32 in [0, 1]: (H, W, 3) RGB, or (H, W, 1) intensity with ``color=False``.

    Grey images are tiled to three channels when ``color``; an alpha channel is dropped.
    """
    import skimage
    import skimage.io
    try:
        raw = skimage.io.imread(filename, as_gray=not color)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CaffeError(f"{filename}: cannot read image ({reason})") from None
    img = skimage.img_as_float(raw).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def resize_image(im, new_dims, interp_order=1):
    """Resize (H, W, K) to (new_dims[0], new_dims[1], K), float32; ``interp_order`` 0 nearest, 1 linear, 3 cubic.

    Images of 1 or 3 channels are stretched to [0, 1], resized by scikit-image
    with constant borders and stretched back (pycaffe's way); other channel
    counts go through ``scipy.ndimage.zoom``. A constant image stays constant.
    """
    new_dims = tuple(int(d) for d in new_dims)
    if im.shape[-1] not in (1, 3):
        from scipy.ndimage import zoom
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        return zoom(im, scale + (1,), order=interp_order).astype(np.float32)
    from skimage.transform import resize
    lo, hi = im.min(), im.max()
    if hi <= lo:
        return np.full(new_dims + (im.shape[-1],), lo, dtype=np.float32)
    unit = (im - lo) / (hi - lo)
    resized = resize(unit, new_dims, order=interp_order, mode="constant")
    return (resized * (hi - lo) + lo).astype(np.float32)


def _crop_boxes(im_shape, crop_dims):
    """(top, left, bottom, right) of the four corner crops and the centre crop."""
    ch, cw = crop_dims
    boxes = [(i, j, i + ch, j + cw) for i in (0, im_shape[0] - ch) for j in (0, im_shape[1] - cw)]
    centre = np.array(im_shape[:2]) / 2.0
    top, left = (centre - np.array(crop_dims) / 2.0).astype(int)
    boxes.append((top, left, top + ch, left + cw))
    return boxes


def oversample(images, crop_dims):
    """Ten crops per image: four corners and the centre, then the same five mirrored.

    images: a sequence of (H, W, K) arrays of one size; returns (10 * N, h, w, K) float32.
    """
    crop_dims = tuple(int(d) for d in crop_dims)
    boxes = _crop_boxes(np.asarray(images[0]).shape, crop_dims)
    crops = []
    for im in images:
        five = [im[t:b, l:r, :] for t, l, b, r in boxes]
        crops += five + [c[:, ::-1, :] for c in five]
    return np.array(crops, dtype=np.float32)


# ---- Transformer -------------------------------------------------------------


class Transformer:
    """Turns images into net inputs and back, per input blob.

    ``Transformer({'data': net.blobs['data'].data.shape})``; the steps of
    :meth:`preprocess`, in order: float32, resize to the blob's (H, W),
    transpose, channel swap, raw scale, subtract mean, input scale.
    """

    def __init__(self, inputs):
        self.inputs = {name: tuple(shape) for name, shape in inputs.items()}
        self.transpose, self.channel_swap, self.raw_scale = {}, {}, {}
        self.mean, self.input_scale = {}, {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise CaffeError(f"{in_} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_, data):
        """(H', W', K) image -> (K, H, W) float32 input for blob ``in_``."""
        self._check_input(in_)
        x = data.astype(np.float32, copy=False)
        in_dims = self.inputs[in_][2:]
        if x.shape[:2] != in_dims:
            x = resize_image(x, in_dims)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_]), :, :]
        x = np.array(x, dtype=np.float32)  # a copy: the caller's image is left alone
        if in_ in self.raw_scale:
            x *= self.raw_scale[in_]
        if in_ in self.mean:
            x -= self.mean[in_]
        if in_ in self.input_scale:
            x *= self.input_scale[in_]
        return x

    def deprocess(self, in_, data):
        """Undo :meth:`preprocess` (all but the resize): (K, H, W) -> (H, W, K)."""
        self._check_input(in_)
        x = data.copy().squeeze()
        if in_ in self.input_scale:
            x = x / self.input_scale[in_]
        if in_ in self.mean:
            x = x + self.mean[in_]
        if in_ in self.raw_scale:
            x = x / self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x

    def set_transpose(self, in_, order):
        """Axis order from image to blob, e.g. (2, 0, 1) for (H, W, K) -> (K, H, W)."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise CaffeError(f"transpose for '{in_}' needs {len(self.inputs[in_]) - 1} axes, "
                             f"found {len(order)}")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        """Channel order after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise CaffeError(f"channel swap for '{in_}' needs {self.inputs[in_][1]} channels, "
                             f"found {len(order)}")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        """Multiply the image by ``scale`` before the mean (255 for [0, 1] images to ImageNet models)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: per channel (K,), or a full (K, H, W) / (H, W) mean.

        A full mean of another size is resized to the blob's (H, W).
        """
        self._check_input(in_)
        mean = np.asarray(mean)
        shape = self.inputs[in_][1:]
        if mean.ndim == 1:
            if mean.shape[0] != shape[0]:
                raise CaffeError(f"mean for '{in_}' has {mean.shape[0]} channels, input has {shape[0]}")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if mean.ndim == 2:
                mean = mean[np.newaxis]
            if mean.ndim != 3:
                raise CaffeError(f"mean for '{in_}' must be (K,), (H, W) or (K, H, W), found {mean.shape}")
            if mean.shape != shape:
                mean = _resize_mean(mean, shape[1:])
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply by ``scale`` after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale


def _resize_mean(mean, dims):
    """A (K, H, W) mean resized to (K, dims[0], dims[1]) through resize_image."""
    lo, hi = mean.min(), mean.max()
    unit = (mean - lo) / (hi - lo)
    return resize_image(unit.transpose(1, 2, 0), dims).transpose(2, 0, 1) * (hi - lo) + lo
