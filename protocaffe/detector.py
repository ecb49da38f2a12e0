"""pycaffe's ``caffe.Detector``: classify windows (R-CNN style crops) of images.

``detect_windows([(filename, [(ymin, xmin, ymax, xmax), ...]), ...])`` crops each window
(with ``context_pad`` pixels of surrounding context, padded with the mean where the
context leaves the image), warps it to the net's input and returns one
``{'filename', 'window', 'prediction'}`` dict per window.
"""
import numpy as np

from protocaffe import io
from protocaffe.classifier import make_transformer
from protocaffe.errors import CaffeError
from protocaffe.pycaffe import TEST, Net


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None, context_pad=None)``."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = make_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Predictions for every window of every image, in order."""
        images_windows = [(f, list(w)) for f, w in images_windows]
        crops = []
        for filename, windows in images_windows:
            image = io.load_image(filename)
            crops += [self.crop(image, np.asarray(w)) for w in windows]
        in_ = self.inputs[0]
        caffe_in = np.array([self.transformer.preprocess(in_, c) for c in crops], dtype=np.float32)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        pairs = [(f, w) for f, windows in images_windows for w in windows]
        return [{"window": w, "prediction": p, "filename": f} for (f, w), p in zip(pairs, predictions)]

    def detect_selective_search(self, image_fnames):
        raise CaffeError("detect_selective_search needs the MATLAB selective_search_ijcv_with_python "
                         "tool, which protocaffe does not ship; pass windows to detect_windows instead")

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of ``im``; with context_pad, the window widened so that
        a context_pad border of the net input is context, out-of-image parts filled with the mean."""
        if not self.context_pad:
            return im[window[0]:window[2], window[1]:window[3]]
        size = self.blobs[self.inputs[0]].width  # square inputs, as in pycaffe
        scale = size / (1.0 * size - self.context_pad * 2)
        half_h, half_w = (window[2] - window[0] + 1) / 2.0, (window[3] - window[1] + 1) / 2.0
        centre = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(centre, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h, scale_w = size / (box[2] - box[0] + 1), size / (box[3] - box[1] + 1)
        pad_y, pad_x = round(max(0, -box[0]) * scale_h), round(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w]).astype(int)
        crop_h = min(round((box[2] - box[0] + 1) * scale_h), size - pad_y)
        crop_w = min(round((box[3] - box[1] + 1) * scale_w), size - pad_x)
        context = io.resize_image(im[box[0]:box[2], box[1]:box[3]], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return crop

    def configure_crop(self, context_pad):
        """Crop size (H, W, K) from the net input; the mean in image space for context padding."""
        in_ = self.inputs[0]
        order = self.transformer.transpose[in_]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[[order[t] for t in order]]
        self.context_pad = context_pad
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose([order[t] for t in order])
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            crop_mean = crop_mean[:, :, [list(swap).index(i) for i in range(crop_mean.shape[2])]]
        raw_scale = self.transformer.raw_scale.get(in_)
        self.crop_mean = crop_mean / raw_scale if raw_scale is not None else crop_mean
