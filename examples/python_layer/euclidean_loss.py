"""A Euclidean loss written for pycaffe, as a Caffe user writes one; it runs unchanged on protocaffe.

loss = sum((prediction - target) ** 2) / (2 * batch size). Use it as
    layer { type: "Python" bottom: "pred" bottom: "target" top: "loss" loss_weight: 1
            python_param { module: "euclidean_loss" layer: "EuclideanLoss" } }
with this folder on PYTHONPATH.
"""
import caffe
import numpy as np


class EuclideanLoss(caffe.Layer):

    def setup(self, bottom, top):
        if len(bottom) != 2 or len(top) != 1:
            raise ValueError("EuclideanLoss needs two bottoms (prediction, target) and one top")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise ValueError(f"bottoms hold {bottom[0].count} and {bottom[1].count} values")
        self.residual = np.zeros(bottom[0].data.shape, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.residual[...] = bottom[0].data - bottom[1].data.reshape(self.residual.shape)
        top[0].data[0] = 0.5 * np.square(self.residual).sum() / bottom[0].num

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                grad = sign * top[0].diff[0] / bottom[i].num * self.residual
                bottom[i].diff[...] = grad.reshape(bottom[i].diff.shape)
