"""Vision layers: Convolution, Deconvolution, Pooling, LRN, InnerProduct, Embed, Crop."""
import torch
import torch.nn.functional as F

from protocaffe.layer_types.base import Layer, canonical_axis, count, register
from protocaffe.proto import caffe_pb2
from protocaffe.shapes import conv_out, conv_overhang, deconv_out, pool_out
from protocaffe.speed import LowPrecisionLinear, low_precision_linear_pays


def _conv_dims(layer, p, repeated, single_h=None, single_w=None, fallback=None, axes=2):
    """Caffe's two ways to give a size per spatial axis: a repeated field (once, or once per
    axis) or, for 2 axes only, the _h/_w pair, never both. With neither, ``fallback``
    (Caffe's built-in 0 pad, 1 stride/dilation); None means the size is required."""
    values = list(getattr(p, repeated))
    if single_h and (p.HasField(single_h) or p.HasField(single_w)):
        if axes != 2:
            raise layer.error(f"{single_h}/{single_w} work for 2 spatial axes only; this input has {axes}: "
                              f"give {repeated} instead")
        if values:
            raise layer.error(f"give {repeated} or {single_h}/{single_w}, not both; found "
                              f"{repeated}: {values}")
        return int(getattr(p, single_h)), int(getattr(p, single_w))
    if len(values) in (1, axes):
        return tuple(int(v) for v in values) if len(values) == axes else (int(values[0]),) * axes
    if not values and fallback is not None:
        return (fallback,) * axes
    raise layer.error(f"{repeated} must be given once or once per spatial axis ({axes}), found "
                      f"{len(values)} values {values}")


def _add_bias(layer, p, size):
    """The optional bias blob of (size,) (num_output) shared by Convolution, InnerProduct and Embed."""
    if p.bias_term:
        layer.add_blob("bias", (size,), p.bias_filler)
    else:
        layer.bias = None
        layer.blob_names = ("weight",)


class _ConvBase(Layer):
    """Caffe's convolutions over N spatial axes: the axes after the channel ``axis``; the axes
    before it are all batch. PyTorch's conv1d/2d/3d run them, so 1 to 3 spatial axes."""
    blob_names = ("weight", "bias")

    def setup(self, bottom_shapes):
        p = self.param.convolution_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self)
        axes = len(shape) - self.axis - 1
        if not 1 <= axes <= 3:
            raise self.error(f"convolves 1 to 3 spatial axes after the channel axis {self.axis}; "
                             f"the bottom's shape {tuple(shape)} has {axes}")
        self.kernel = _conv_dims(self, p, "kernel_size", "kernel_h", "kernel_w", axes=axes)
        self.stride = _conv_dims(self, p, "stride", "stride_h", "stride_w", 1, axes=axes)
        self.pad = _conv_dims(self, p, "pad", "pad_h", "pad_w", 0, axes=axes)
        self.dilation = _conv_dims(self, p, "dilation", fallback=1, axes=axes)
        for what, dims in (("kernel size", self.kernel), ("stride", self.stride),
                           ("dilation", self.dilation)):
            if 0 in dims:
                raise self.error(f"{what} must be positive, found {dims}")
        channels = shape[self.axis]
        self.num_output, self.group = self.outputs_and_group(p, channels)
        if self.num_output == 0:
            raise self.error("num_output must be positive, found 0")
        if channels % self.group or self.num_output % self.group:
            raise self.error(f"channels ({channels}) and num_output ({self.num_output}) must be "
                             f"divisible by group ({self.group})")
        out = self.top_shapes(bottom_shapes)[0][self.axis + 1:]
        if min(out) <= 0:
            raise self.error(f"kernel {self.kernel} (dilation {self.dilation}, pad {self.pad}, "
                             f"stride {self.stride}) does not fit the input size "
                             f"{tuple(shape[self.axis + 1:])}: output size {out}")
        self.add_blob("weight", self.weight_shape(channels, self.num_output), p.weight_filler)
        _add_bias(self, p, self.num_output)

    def outputs_and_group(self, p, channels):
        """The output channels and the group count: convolution_param's."""
        return p.num_output, p.group

    def top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        return [tuple(shape[:self.axis]) + (self.num_output,)
                + tuple(self.out_size(s, k, st, p, d) for s, k, st, p, d in
                        zip(shape[self.axis + 1:], self.kernel, self.stride, self.pad, self.dilation))]

    def forward(self, x):
        """The axes before the channel axis fold into one batch axis and unfold after."""
        lead = x.shape[:self.axis]
        y = self.convolve(x.reshape((-1,) + tuple(x.shape[self.axis:])))
        return y.reshape(tuple(lead) + tuple(y.shape[1:]))


def _overhang(layer, sizes):
    """Per spatial axis, the zeros past the end that a window larger than the padded input
    reads (Caffe's im2col reads zeros there); 0 where the window fits."""
    return tuple(conv_overhang(s, k, pd, d) for s, k, pd, d in zip(sizes, layer.kernel, layer.pad, layer.dilation))


def _pad_overhang(layer, x):
    """``x`` (N, C, spatial...) with those zeros appended, for Convolution and Im2col."""
    extra = _overhang(layer, x.shape[2:])
    return F.pad(x, [v for e in reversed(extra) for v in (0, e)]) if any(extra) else x


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@register
class Convolution(_ConvBase):
    """(N, C, H, W) -> (N, num_output, H', W'), H' = (H + 2 pad - (dilation (k - 1) + 1)) / stride + 1.

    Weight (num_output, C / group, kh, kw). Same arithmetic as ``F.conv2d``; the division
    truncates toward zero as Caffe's, so a window overhanging the padded input by less
    than a stride gives one output over zeros past the end, as in Caffe. Any number of
    leading axes before ``axis`` and 1 to 3 spatial axes after it, as Caffe's N-d
    convolution (kernel_size etc. once or once per spatial axis).
    """
    type = "Convolution"
    out_size = staticmethod(conv_out)

    def weight_shape(self, channels, num_output):
        return (num_output, channels // self.group) + self.kernel

    def overhang(self, *sizes):
        """Zeros past the end of each spatial axis for a window larger than the padded input."""
        return _overhang(self, sizes)

    def convolve(self, x):
        x = _pad_overhang(self, x)
        return _CONV[len(self.kernel)](x, self.weight, self.bias, self.stride, self.pad, self.dilation,
                                       self.group)


@register
class Deconvolution(_ConvBase):
    """(N, C, H, W) -> (N, num_output, H', W'), H' = stride (H - 1) + dilation (k - 1) + 1 - 2 pad.

    Weight (C, num_output / group, kh, kw): Caffe's layout is PyTorch's ``conv_transpose2d``'s.
    Leading and spatial axes as Convolution's.
    """
    type = "Deconvolution"
    out_size = staticmethod(deconv_out)

    def weight_shape(self, channels, num_output):
        return (channels, num_output // self.group) + self.kernel

    def convolve(self, x):
        return _DECONV[len(self.kernel)](x, self.weight, self.bias, self.stride, self.pad, 0, self.group,
                                         self.dilation)


PoolMethod = caffe_pb2.PoolingParameter


def _pool_field_pair(layer, p, single, h, w):
    """Pooling's ``single`` OR its ``h``/``w`` pair, given both or neither (Caffe's LayerSetUp rule)."""
    if p.HasField(h) or p.HasField(w):
        if p.HasField(single) or not (p.HasField(h) and p.HasField(w)):
            raise layer.error(f"give {single} OR both {h} and {w}, found "
                              + ", ".join(f"{f}: {getattr(p, f)}" for f in (single, h, w) if p.HasField(f)))
        return int(getattr(p, h)), int(getattr(p, w))
    return int(getattr(p, single)), int(getattr(p, single))


@register
class Pooling(Layer):
    """MAX, AVE or STOCHASTIC pooling, (N, C, H, W) -> (N, C, H', W') with Caffe's output size.

    H' = ceil((H + 2 pad - k) / stride) + 1 (floor for round_mode FLOOR); when either axis
    is padded, a last window starting in the padding is dropped, on both axes (see
    :func:`protocaffe.shapes.pool_out`). Where Caffe differs from PyTorch: the last window
    may run past the padded input (it is clipped, not dropped); MAX never takes a padded
    value; AVE divides by the window clipped to H + pad, so padding counts but the overhang
    beyond it does not. Implemented by padding explicitly (-inf or 0) and dividing by a
    precomputed window-size map.

    STOCHASTIC (no padding; activations assumed non-negative): in TRAIN each window outputs
    one of its values, drawn with probability proportional to the value (uniform draws made
    on the input's device, from the net's generator for it), and the gradient goes to that
    position only; in TEST it outputs sum(x^2) / sum(x) over the window, 0 where the sum is
    not positive. BVLC Caffe has this on the GPU only; the TEST output gets autograd's
    gradient of that formula, where Caffe has no TEST backward.

    A second top (MAX only) is Caffe's argmax mask, shaped like the first: for each window the
    flat index h * W + w of its maximum in the (n, c) input plane, the first maximum in
    row-major order, as floats; -1 where a window holds no input value. It carries no
    gradient. SegNet's and ENet's Upsample layers unpool with it.
    """
    type = "Pooling"
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        p = self.param.pooling_param
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-axis (N, C, H, W) input, found shape {bottom_shapes[0]}")
        self.method = p.pool
        self.global_pooling = p.global_pooling
        self.pad = _pool_field_pair(self, p, "pad", "pad_h", "pad_w")
        self.stride = _pool_field_pair(self, p, "stride", "stride_h", "stride_w")
        self.kernel = self._read_kernel(p)
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error(f"global_pooling allows only pad 0 and stride 1, found pad {self.pad}, "
                             f"stride {self.stride}")
        if 0 in self.stride:
            raise self.error(f"stride must be positive, found {self.stride}")
        if any(self.pad):
            if self.method == PoolMethod.STOCHASTIC:
                raise self.error(f"padding works with MAX and AVE only, found pad {self.pad} "
                                 "with STOCHASTIC")
            if any(pd >= k for pd, k in zip(self.pad, self.kernel)):
                raise self.error(f"pad {self.pad} must be smaller than kernel {self.kernel}")
        self.ceil = p.round_mode == PoolMethod.CEIL
        self.with_mask = len(self.param.top) == 2
        if self.with_mask and self.method != PoolMethod.MAX:
            raise self.error(f"a second top (the argmax mask) needs MAX pooling, found "
                             f"{PoolMethod.PoolMethod.Name(self.method)}")
        self._divisors = {}
        self._check_out(bottom_shapes[0])

    def _read_kernel(self, p):
        given = [f for f in ("kernel_size", "kernel_h", "kernel_w") if p.HasField(f)]
        if self.global_pooling:
            if given:
                raise self.error(f"global_pooling takes its kernel from the input; found {given[0]}: "
                                 f"{getattr(p, given[0])}")
            return None
        if p.HasField("kernel_h") or p.HasField("kernel_w"):
            kernel = _pool_field_pair(self, p, "kernel_size", "kernel_h", "kernel_w")
        elif p.HasField("kernel_size"):
            kernel = (p.kernel_size, p.kernel_size)
        else:
            raise self.error("needs kernel_size (or kernel_h and kernel_w) or global_pooling")
        if 0 in kernel:
            raise self.error(f"kernel size must be positive, found {kernel}")
        return kernel

    def _check_out(self, shape):
        h, w = shape[2:]
        out = self._out(h, w)
        if min(out) <= 0:
            raise self.error(f"kernel {self._kernel(h, w)} with pad {self.pad} and stride "
                             f"{self.stride} does not fit the input size {(h, w)}: output size {out}")

    def _kernel(self, h, w):
        return (h, w) if self.global_pooling else self.kernel

    def _out(self, h, w):
        padded = any(self.pad)
        return tuple(pool_out(s, kk, st, pd, self.ceil, padded=padded) for s, kk, st, pd in
                     zip((h, w), self._kernel(h, w), self.stride, self.pad))

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        return [(n, c) + self._out(h, w)] * len(self.param.top)

    def _divisor(self, h, w, device):
        """Per-output window sizes for AVE: each window clipped to [-pad, size + pad)."""
        key = (h, w, device)
        if key not in self._divisors:
            sizes = []
            for size, k, st, pd, out in zip((h, w), self._kernel(h, w), self.stride, self.pad,
                                            self._out(h, w)):
                start = torch.arange(out, device=device) * st - pd
                sizes.append((torch.clamp(start + k, max=size + pd) - start).float())
            self._divisors[key] = sizes[0][:, None] * sizes[1][None, :]
        return self._divisors[key]

    def _padded(self, x, value):
        """x padded by ``pad`` on each side plus, at the end, the overhang of the last window."""
        h, w = x.shape[2:]
        extra = [max(0, (o - 1) * st + k - (s + 2 * pd)) for o, st, k, s, pd in
                 zip(self._out(h, w), self.stride, self._kernel(h, w), (h, w), self.pad)]
        pads = (self.pad[1], self.pad[1] + extra[1], self.pad[0], self.pad[0] + extra[0])
        return F.pad(x, pads, value=value) if any(pads) else x

    def forward(self, x):
        h, w = x.shape[2:]
        k = self._kernel(h, w)
        if self.method == PoolMethod.MAX:
            out = self._out(h, w)
            if not any(self.pad) and all((o - 1) * st < size for o, st, size in zip(out, self.stride, (h, w))):
                # unpadded, every window starting inside the input: PyTorch's rounding (ceil_mode) and clipping
                # of the last window are Caffe's, and x is not copied into a padded tensor
                pooled = F.max_pool2d(x, k, self.stride, ceil_mode=self.ceil, return_indices=self.with_mask)
                return (pooled[0], pooled[1].to(x.dtype)) if self.with_mask else pooled
            # Caffe starts each window at -FLT_MAX: a window holding no input value gives it
            padded = self._padded(x, torch.finfo(x.dtype).min)
            pooled = F.max_pool2d(padded, k, self.stride, return_indices=self.with_mask)
            return (pooled[0], self._mask(pooled[1], h, w, padded.shape[-1]).to(x.dtype)) if self.with_mask else pooled
        if self.method == PoolMethod.AVE:
            sums = F.avg_pool2d(self._padded(x, 0.0), k, self.stride, divisor_override=1)
            return sums / self._divisor(h, w, x.device)
        return self._stochastic(x, k)

    def _mask(self, index, h, w, padded_w):
        """Indices into the padded plane as Caffe's mask: h * W + w in the input plane, -1 outside it."""
        row, col = index // padded_w - self.pad[0], index % padded_w - self.pad[1]
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        return torch.where(inside, row * w + col, -1)

    def _stochastic(self, x, k):
        # (N, C, H', W', kh kw): each window's values in Caffe's order, zeros where clipped
        windows = self._padded(x, 0.0).unfold(2, k[0], self.stride[0]).unfold(3, k[1], self.stride[1])
        windows = windows.flatten(-2)
        if self.phase == caffe_pb2.TRAIN:
            cumsum = windows.detach().cumsum(-1)
            draw = torch.rand(windows.shape[:-1] + (1,), generator=self.ctx.generator_on(x.device),
                              device=x.device)
            threshold = draw.to(x.dtype) * cumsum[..., -1:]
            # the first position whose running sum reaches the threshold, as Caffe's kernel
            index = (cumsum >= threshold).int().argmax(-1, keepdim=True)
            return windows.gather(-1, index).squeeze(-1)
        total = windows.sum(-1)
        positive = total > 0
        return torch.where(positive, (windows * windows).sum(-1) / torch.where(positive, total, 1.0), 0.0)


@register
class LRN(Layer):
    """Local response normalization, (N, C, H, W) -> same shape.

    ACROSS_CHANNELS: x / (k + alpha / n * sum of x^2 over n neighbouring channels)^beta.
    WITHIN_CHANNEL: x / (1 + alpha / n^2 * sum of x^2 over an n x n patch)^beta; Caffe
    ignores ``k`` here. PyTorch's LocalResponseNorm matches only the first, so both are
    written out: across channels with Caffe's own backward formula, within a channel with
    average pooling of x^2 (zero padding counted, as Caffe does) and autograd.
    """
    type = "LRN"

    def setup(self, bottom_shapes):
        p = self.param.lrn_param
        if p.local_size % 2 == 0:
            raise self.error(f"local_size must be odd, found {p.local_size}")
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.across = p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        if self.across:
            return _CrossChannelLRN.apply(x, self.size, self.alpha, self.beta, self.k)
        half = (self.size - 1) // 2
        avg = F.avg_pool2d(x * x, self.size, 1, half, count_include_pad=True)
        return x * (1 + self.alpha * avg).pow(-self.beta)


def _channel_window_sum(t, size):
    """Sum over ``size`` neighbouring channels (dim 1), zero-padded: ``size`` shifted adds."""
    half, channels = (size - 1) // 2, t.shape[1]
    padded = F.pad(t, (0, 0, 0, 0, half, half))
    total = padded[:, :channels].clone()
    for i in range(1, size):
        total += padded[:, i:i + channels]
    return total


class _CrossChannelLRN(torch.autograd.Function):
    """ACROSS_CHANNELS LRN with Caffe's analytic backward (lrn_layer.cpp):

        scale = k + alpha / n * sum of x^2 over the window,   y = x * scale^-beta
        dx = dy * scale^-beta - 2 * alpha * beta / n * x * (window sum of dy * y / scale)

    Three times faster on the CPU than autograd through pooling and pow (CaffeNet's two
    LRNs at batch 10, forward and backward: 7.6 ms against 24.1 ms), and it keeps only x,
    scale and scale^-beta for the backward."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        scale = _channel_window_sum(x * x, size).mul_(alpha / size).add_(k)
        inverse = scale.pow(-beta)
        ctx.save_for_backward(x, scale, inverse)
        ctx.constants = size, alpha, beta
        return x * inverse

    @staticmethod
    def backward(ctx, dy):
        x, scale, inverse = ctx.saved_tensors
        size, alpha, beta = ctx.constants
        ratio = _channel_window_sum(dy * x * inverse / scale, size)
        return dy * inverse - (2 * alpha * beta / size) * x * ratio, None, None, None, None


@register
class InnerProduct(Layer):
    """Fully connected: (d0, ..., d_{axis-1}, K...) -> (d0, ..., d_{axis-1}, num_output).

    Everything from ``axis`` on is flattened to K. Weight (num_output, K), or
    (K, num_output) with ``transpose: true``.
    """
    type = "InnerProduct"
    blob_names = ("weight", "bias")
    fp32_weight_gradient = False  # set by Speed.prepare for bf16/fp16 on the CPU

    def setup(self, bottom_shapes):
        p = self.param.inner_product_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self)
        k = count(shape, self.axis)
        self.transpose = p.transpose
        self.add_blob("weight", (k, p.num_output) if p.transpose else (p.num_output, k), p.weight_filler)
        _add_bias(self, p, p.num_output)

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0][:self.axis]) + (self.param.inner_product_param.num_output,)]

    def forward(self, x):
        x = x.flatten(self.axis) if self.axis < x.dim() - 1 else x
        w = self.weight.t() if self.transpose else self.weight
        if self.fp32_weight_gradient and low_precision_linear_pays(x):
            return LowPrecisionLinear.apply(x, w, self.bias, torch.get_autocast_dtype(x.device.type))
        return F.linear(x, w, self.bias)


@register
class Embed(Layer):
    """Lookup table: indices of any shape (stored as floats) -> shape + (num_output,).

    Weight (input_dim, num_output). No gradient flows to the indices.
    """
    type = "Embed"
    blob_names = ("weight", "bias")

    def setup(self, bottom_shapes):
        p = self.param.embed_param
        self.add_blob("weight", (p.input_dim, p.num_output), p.weight_filler)
        _add_bias(self, p, p.num_output)

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0]) + (self.param.embed_param.num_output,)]

    def forward(self, x):
        idx = x.detach().long()
        # checked on the CPU only: the check reads back; on a GPU, embedding asserts on its own
        if idx.device.type == "cpu" and idx.numel() and (idx.min() < 0 or idx.max() >= self.weight.shape[0]):
            raise self.error(f"indices must lie in [0, {self.weight.shape[0]}), found "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        out = F.embedding(idx, self.weight)
        return out + self.bias if self.bias is not None else out


@register
class Crop(Layer):
    """Crops bottom 0 to the shape of bottom 1 on every axis from ``axis`` on.

    Offsets: none (0), one for all cropped axes, or one per cropped axis.
    Only bottom 0 gets a gradient.
    """
    type = "Crop"
    num_bottoms = 2

    def setup(self, bottom_shapes):
        p = self.param.crop_param
        a, b = bottom_shapes
        self.axis = canonical_axis(p.axis, len(a), self)
        n = len(a) - self.axis
        offsets = list(p.offset)
        if len(offsets) not in (0, 1, n):
            raise self.error(f"needs 0, 1 or {n} offsets, found {len(offsets)}")
        self.offsets = [offsets[0] if len(offsets) == 1 else (offsets[i] if offsets else 0)
                        for i in range(n)]
        for i, off in enumerate(self.offsets):
            d = self.axis + i
            if off + b[d] > a[d]:
                raise self.error(f"crop of axis {d} at offset {off} to size {b[d]} exceeds the input "
                                 f"size {a[d]}")

    def top_shapes(self, bottom_shapes):
        a, b = bottom_shapes
        return [tuple(a[:self.axis]) + tuple(b[self.axis:])]

    def forward(self, x, like):
        index = [slice(None)] * self.axis + [slice(off, off + like.shape[self.axis + i])
                                             for i, off in enumerate(self.offsets)]
        return x[tuple(index)]
