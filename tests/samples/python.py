"""Sample of the Python layer (protocaffe/layer_types/python.py) for tests/test_registry.py.

The layer class is this module's own ``ProductLayer``, written against pycaffe's API; its
scale is a learnable blob (``self.blobs``), so the sample also runs a layer blob in float64.
"""
import json

import protocaffe

SAMPLES = {
    "Python": ('name: "l" type: "Python" bottom: "b0" bottom: "b1" top: "t0" top: "t1" '
               'python_param { module: "samples.python" layer: "ProductLayer" param_str: "{\\"scale\\": 0.5}" }',
               [(2, 3), (2, 3)]),
}


class ProductLayer(protocaffe.Layer):
    """top 0 = scale * bottom 0 * bottom 1; top 1 = bottom 0 + bottom 1; scale a (1,) blob."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = json.loads(self.param_str)["scale"]

    def reshape(self, bottom, top):
        for t in top:
            t.reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data * bottom[0].data * bottom[1].data
        top[1].data[...] = bottom[0].data + bottom[1].data

    def backward(self, top, propagate_down, bottom):
        scale = self.blobs[0].data
        self.blobs[0].diff[...] = (top[0].diff * bottom[0].data * bottom[1].data).sum()
        for i in range(2):
            if propagate_down[i]:
                other = bottom[1 - i].data
                bottom[i].diff[...] = scale * top[0].diff * other + top[1].diff
