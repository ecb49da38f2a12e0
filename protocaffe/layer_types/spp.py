"""Spatial pyramid pooling: SPP."""
import torch
from google.protobuf import text_format

from protocaffe.layer_types.base import Layer, register
from protocaffe.layer_types.vision import Pooling
from protocaffe.proto import caffe_pb2


def spp_level(level, height, width):
    """Kernel, stride and pad of pyramid level ``level`` (2**level bins a side) for an H x W input.

    As Caffe's SPPLayer::GetPoolingParam, per axis: ``kernel = stride = ceil(size / bins)``,
    ``pad = (kernel * bins - size + 1) // 2``. Returns ((kh, kw), (ph, pw)).
    """
    bins = 2 ** level
    kernel = tuple(-(-size // bins) for size in (height, width))
    pad = tuple((k * bins - size + 1) // 2 for k, size in zip(kernel, (height, width)))
    return kernel, pad


@register
class SPP(Layer):
    """Spatial pyramid pooling, (N, C, H, W) -> (N, C * sum over levels of bins_h * bins_w).

    Level l (l < ``pyramid_height``) pools with kernel = stride = ceil(H / 2**l) and
    the pad that centres the windows (:func:`spp_level`), by Caffe's Pooling rules
    (rounded-up output size, clipped last window), so a level has 2**l bins a side
    for most sizes; each level is flattened per item and the levels are concatenated.
    With ``pyramid_height: 1`` Caffe returns the single pooling output unflattened,
    (N, C, 1, 1), and so does this layer. The levels are recomputed for every input
    size, as Caffe's Reshape does.
    """
    type = "SPP"

    def setup(self, bottom_shapes):
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-axis (N, C, H, W) input, found shape {bottom_shapes[0]}")
        p = self.param.spp_param
        if p.pyramid_height < 1:
            raise self.error(f"needs pyramid_height of at least 1, found {p.pyramid_height}")
        self.height = p.pyramid_height
        self.pool = caffe_pb2.SPPParameter.PoolMethod.Name(p.pool)
        self._levels = {}
        self._pooling(*bottom_shapes[0][2:])

    def _pooling(self, height, width):
        """The Pooling layers of every level for an H x W input (built once per size)."""
        if (height, width) not in self._levels:
            if height <= 0 or width <= 0:
                raise self.error(f"needs a non-empty input, found {height}x{width}")
            levels = []
            for level in range(self.height):
                (kh, kw), (ph, pw) = spp_level(level, height, width)
                if ph >= kh or pw >= kw:
                    raise self.error(f"level {level} of the pyramid needs pad ({ph}, {pw}) below kernel "
                                     f"({kh}, {kw}); a {height}x{width} input is too small for "
                                     f"pyramid_height {self.height}")
                param = text_format.Parse(
                    f'name: "{self.name}/level{level}" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {self.pool} '
                    f'kernel_h: {kh} kernel_w: {kw} stride_h: {kh} stride_w: {kw} pad_h: {ph} pad_w: {pw} }}',
                    caffe_pb2.LayerParameter())
                levels.append(Pooling(param, [(1, 1, height, width)], self.ctx))
            self._levels[(height, width)] = levels
        return self._levels[(height, width)]

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        shapes = [lvl.top_shapes([(n, c, h, w)])[0] for lvl in self._pooling(h, w)]
        if self.height == 1:
            return [shapes[0]]
        return [(n, sum(c * s[2] * s[3] for s in shapes))]

    def forward(self, x):
        levels = [pool(x) for pool in self._pooling(*x.shape[2:])]
        if self.height == 1:
            return levels[0]
        return torch.cat([lvl.flatten(1) for lvl in levels], dim=1)
