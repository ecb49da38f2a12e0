"""pycaffe's ``caffe.Classifier``: a Net that takes images and returns class probabilities.

Images (H, W, K floats, as :func:`protocaffe.io.load_image` gives) are resized to
``image_dims``, cropped to the net's input size (ten crops with ``oversample``, else the
centre), preprocessed by a :class:`~protocaffe.io.Transformer` and run in batches;
ten-crop predictions are averaged per image.
"""
import numpy as np

from protocaffe import io
from protocaffe.pycaffe import TEST, Net


def make_transformer(net, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """The Transformer that Classifier and Detector set up for the net's first input."""
    in_ = net.inputs[0]
    t = io.Transformer({in_: net.blobs[in_].data.shape})
    t.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        t.set_mean(in_, mean)
    if input_scale is not None:
        t.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        t.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        t.set_channel_swap(in_, channel_swap)
    return t


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``; ``image_dims`` defaults to the net's input size."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = make_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or not len(image_dims) else image_dims

    def predict(self, inputs, oversample=True):
        """(N, C) class probabilities for N images; ``oversample`` averages the ten crops."""
        images = np.array([io.resize_image(im, self.image_dims) for im in inputs], dtype=np.float32)
        if oversample:
            crops = io.oversample(images, self.crop_dims)
        else:
            centre = np.array(self.image_dims) / 2.0
            top, left = (centre - self.crop_dims / 2.0).astype(int)
            bottom, right = (centre + self.crop_dims / 2.0).astype(int)
            crops = images[:, top:bottom, left:right, :]
        in_ = self.inputs[0]
        caffe_in = np.array([self.transformer.preprocess(in_, c) for c in crops], dtype=np.float32)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape(len(predictions) // 10, 10, -1).mean(1)
        return predictions
