"""A Python 3 rendering of ENet's spatial dropout layer (caffe-enet python/spatial_dropout.py, whose
Python 2 original does not import under Python 3), for the ENet-shaped test net: ``param_str``
is a dict literal with ``phase`` ('TRAIN' or 'TEST') and ``p``. In TRAIN whole channels are
dropped per item and the rest scaled by 1/(1-p); in TEST everything is scaled by 1/(1-p), as the
original does (ENet's BN absorber folds that factor into the preceding convolution)."""
import ast

import numpy as np

import caffe


class SpatialDropoutLayer(caffe.Layer):
    def setup(self, bottom, top):
        param = ast.literal_eval(self.param_str)
        self.train = param["phase"] == "TRAIN"
        self.p = float(param["p"])
        self.scale = 1.0 / (1.0 - self.p)
        self.keep = np.ones(bottom[0].data.shape[:2] + (1, 1), np.float32)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        if self.train:
            self.keep = np.random.binomial(1, 1 - self.p, bottom[0].data.shape[:2] + (1, 1)).astype(np.float32)
        top[0].data[...] = bottom[0].data * (self.keep * self.scale if self.train else self.scale)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * (self.keep * self.scale if self.train else self.scale)
