"""YOLOv2 in Caffe: the passthrough ``Reorg`` and darknet's ``Region`` activations."""
import torch

from protocaffe.layer_types.base import Layer, register
from protocaffe.proto.forks import yolo_pb2  # noqa: F401 (the layers' parameters)


@register
class Reorg(Layer):
    """darknet's reorg: x (N, C, H, W) -> (N, C * s^2, H / s, W / s), or with ``reverse`` the
    inverse, (N, C / s^2, H * s, W * s); s = ``reorg_param.stride`` (required).

    Not a space-to-depth: as darknet's ``reorg_cpu(..., forward=0)`` (eric612's and gklz1982's
    reorg_layer.hpp), output position (k, j, i) over the *input's* (C, H, W) reads the input
    viewed as (C / s^2, H * s, W * s) at (k % (C / s^2), j * s + o / s, i * s + o % s) with
    o = k / (C / s^2); the result is then read as (C * s^2, H / s, W / s). OpenCV's ReorgLayer
    computes the same. Backward: the transposed shuffle (autograd). The forks' backward reads
    an internal buffer never written instead of the top's diff, so their gradient is zero;
    this one is the shuffle's true gradient.
    """
    type = "Reorg"

    def setup(self, bottom_shapes):
        p = self.layer_param("reorg_param")
        if not p.HasField("stride") or p.stride < 1:
            raise self.error(f"reorg_param needs stride >= 1 (the forks require it), found "
                             f"{p.stride if p.HasField('stride') else 'none'}")
        if self.param.bottom[0] == self.param.top[0]:
            raise self.error("cannot run in place (bottom and top are both "
                             f"'{self.param.top[0]}'), as in the forks")
        self.stride, self.reverse = p.stride, p.reverse
        shape = bottom_shapes[0]
        s2 = self.stride ** 2
        if len(shape) != 4 or shape[1] % s2 or (not self.reverse and (shape[2] % p.stride or shape[3] % p.stride)):
            raise self.error(f"bottom must be (N, C, H, W) with C divisible by stride^2 = {s2}"
                             f"{'' if self.reverse else ' and H, W by the stride'}, found shape {shape}")

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        s = self.stride
        return [(n, c // s ** 2, h * s, w * s) if self.reverse else (n, c * s * s, h // s, w // s)]

    def forward(self, x):
        n, c, h, w = x.shape
        s, out_c = self.stride, c // self.stride ** 2
        if self.reverse:  # input channel o * out_c + c2 at (j, i) -> (c2, j * s + o / s, i * s + o % s)
            return x.reshape(n, s, s, out_c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, out_c, h * s, w * s)
        y = x.reshape(n, out_c, h, s, w, s).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * s * s, h // s, w // s)


@register
class Region(Layer):
    """darknet's region layer (YOLOv2) as openvinotoolkit/training_toolbox_caffe has it:
    x (N, num * (coords + 1 + classes), H, W) -> the same shape.

    ``region_param``: ``coords``, ``classes``, ``num`` (anchors per cell). Each anchor's block of
    channels is [x, y, w, h (coords of them), objectness, class scores]: x, y and the
    objectness go through the logistic, the class scores through a softmax over the classes
    at each position; w, h (and any further coords) pass unchanged. Boxes are decoded from it
    afterwards with the anchors (OpenCV's Region does both, with NHWC input). The fork's
    backward writes nothing; here the gradient is autograd's.
    """
    type = "Region"

    def setup(self, bottom_shapes):
        p = self.layer_param("region_param")
        self.coords, self.classes, self.num = p.coords, p.classes, p.num
        shape = bottom_shapes[0]
        want = self.num * (self.coords + 1 + self.classes)
        if self.coords < 2 or self.classes < 1 or self.num < 1:
            raise self.error(f"region_param needs coords >= 2, classes >= 1, num >= 1, found "
                             f"{self.coords}, {self.classes}, {self.num}")
        if len(shape) != 4 or shape[1] != want:
            raise self.error(f"bottom must be (N, num * (coords + 1 + classes) = {want}, H, W), found shape {shape}")

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        n, c, h, w = x.shape
        v = x.reshape(n, self.num, c // self.num, h, w)
        k = self.coords
        parts = (torch.sigmoid(v[:, :, :2]), v[:, :, 2:k], torch.sigmoid(v[:, :, k:k + 1]),
                 torch.softmax(v[:, :, k + 1:], dim=2))
        return torch.cat(parts, dim=2).reshape(x.shape)
