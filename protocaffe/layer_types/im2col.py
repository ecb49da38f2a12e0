"""Im2col: convolution's patch matrix as a layer."""
import torch.nn.functional as F

from protocaffe.layer_types.base import Layer, canonical_axis, register
from protocaffe.layer_types.vision import _conv_dims, _pad_overhang
from protocaffe.shapes import conv_out


@register
class Im2col(Layer):
    """(N, C, H, W) -> (N, C kh kw, H', W'): every kernel window as a column, H' as Convolution's.

    Reads convolution_param's kernel, stride, pad and dilation (num_output and the
    fillers are unused). Channel c, kernel row i, column j go to channel (c kh + i) kw + j,
    Caffe's im2col order, which is also ``F.unfold``'s. Two spatial axes only (Caffe also
    handles N-d ones).
    """
    type = "Im2col"

    def setup(self, bottom_shapes):
        p = self.param.convolution_param
        shape = bottom_shapes[0]
        if canonical_axis(p.axis, len(shape), self) != 1 or len(shape) != 4:
            raise self.error(f"supports 4-axis (N, C, H, W) input with axis 1, found shape {shape}")
        self.kernel = _conv_dims(self, p, "kernel_size", "kernel_h", "kernel_w")
        self.stride = _conv_dims(self, p, "stride", "stride_h", "stride_w", 1)
        self.pad = _conv_dims(self, p, "pad", "pad_h", "pad_w", 0)
        self.dilation = _conv_dims(self, p, "dilation", fallback=1)
        if min(self.kernel) <= 0 or min(self.stride) <= 0:
            raise self.error(f"kernel {self.kernel} and stride {self.stride} must be positive")
        out = self._out(*shape[2:])
        if min(out) <= 0:  # Caffe builds an empty top here, or fails allocating it
            raise self.error(f"kernel {self.kernel} (dilation {self.dilation}, pad {self.pad}, stride "
                             f"{self.stride}) does not fit the input size {tuple(shape[2:])}: output size {out}")

    def _out(self, h, w):
        return tuple(conv_out(s, k, st, pd, d) for s, k, st, pd, d in
                     zip((h, w), self.kernel, self.stride, self.pad, self.dilation))

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        return [(n, c * self.kernel[0] * self.kernel[1]) + self._out(h, w)]

    def forward(self, x):
        out = self._out(*x.shape[2:])
        cols = F.unfold(_pad_overhang(self, x), self.kernel, self.dilation, self.pad, self.stride)
        return cols.reshape(x.shape[0], cols.shape[1], *out)
