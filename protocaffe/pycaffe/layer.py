"""pycaffe's ``caffe.Layer``: the base class of a user's Python layer (``type: "Python"``).

protocaffe.layer_types.python runs such a class inside a net; this is only what the user
subclasses. (The base class of protocaffe's own layer types, which plugins subclass, is
:class:`protocaffe.layer_types.Layer`, a different thing.)
"""


class Layer:
    """pycaffe's ``caffe.Layer``: subclass it and override the four methods.

    ``self.param_str`` (python_param.param_str; also as ``self.param_str_``, the name
    Faster R-CNN's Caffe used) and ``self.phase`` (TRAIN 0, TEST 1, an int whose str() is
    the phase's name) are set before ``setup``. Each method gets lists of blobs.
    """

    def __init__(self, param=None):
        self.layer_param = param

    @property
    def type(self):
        return "Python"

    def setup(self, bottom, top):
        """Called once, when the net is built."""

    def reshape(self, bottom, top):
        """Called before every forward: reshape the tops to fit the bottoms."""

    def forward(self, bottom, top):
        """Write ``top[i].data`` from ``bottom[i].data``."""

    def backward(self, top, propagate_down, bottom):
        """Write ``bottom[i].diff`` where ``propagate_down[i]``, from ``top[i].diff``."""
