"""Segmentation forks' layers: Upsample (SegNet/ENet max-unpooling, YOLO nearest neighbour), BN
(SegNet's and PSPNet's) and Interp (PSPNet, DeepLab v2).

Their parameters are the forks' extensions (proto/forks/segnet.proto, pspnet.proto), read by
name; where two forks share a type string and a parameter name, one class serves both and
tells them apart by what the file sets (see each class).
"""
import numpy as np
import torch

from protocaffe.layer_types.base import Layer, register
from protocaffe.proto import caffe_pb2
from protocaffe.proto.forks import segnet_pb2

YOLO_SCALE = 1
"""The YOLO ports' UpsampleParameter.scale default (darknet2caffe's README); the proto's default
is SegNet's 2, so a one-bottom Upsample without ``scale`` takes this one."""

SEGNET_EPS = 1e-9
"""What SegNet's BN adds to the variance: a constant in its bn_layer.cpp (var_eps_), which has
no eps field."""

_SEGNET_UPSAMPLE = ("scale_h", "scale_w", "pad_out_h", "pad_out_w", "upsample_h", "upsample_w")
_SEGNET_BN = ("scale_filler", "shift_filler", "bn_mode")
_PSPNET_BN = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")


class _Unpool(torch.autograd.Function):
    """SegNet's unpooling of (N, C, L) values to (N, C, size) planes at ``index``: the last value
    (in input order) naming a position wins, as the fork's CPU loop; the backward gives every
    input the output gradient at its index, overwritten or not, as the fork's backward."""

    @staticmethod
    def forward(ctx, x, index, size):
        order = torch.arange(index.shape[-1], device=x.device).expand_as(index)
        winner = torch.full(x.shape[:-1] + (size,), -1, dtype=torch.long, device=x.device)
        winner.scatter_reduce_(-1, index, order, "amax")
        ctx.save_for_backward(index)
        return torch.where(winner >= 0, x.gather(-1, winner.clamp(min=0)), torch.zeros((), dtype=x.dtype))

    @staticmethod
    def backward(ctx, dy):
        index, = ctx.saved_tensors
        return dy.gather(-1, index), None, None


@register
class Upsample(Layer):
    """Upsampling; two forks' layers under one type string, told apart by the bottoms.

    SegNet / ENet, bottoms (data, mask), the mask a MAX Pooling layer's second top of data's
    shape (N, C, H, W) -> (N, C, H', W'): max-unpooling. Each value goes to the position its
    mask names, read as h' * W' + w' in the output plane; all else is 0. H' x W' is
    upsample_h x upsample_w when both are given, else H * scale_h - pad_out_h by
    W * scale_w - pad_out_w (scale_h = scale_w = scale unless both are given; pad_out with
    scale 2 only). As in the fork, that size is fixed when the layer is set up, and where two
    values name one position the last wins while both get its gradient. No gradient to the mask.

    YOLO ports (darknet2caffe, MobileNet-YOLO), one bottom (N, C, H, W) -> (N, C, H s, W s),
    s = scale: nearest neighbour, each value repeated over an s x s block (PyTorch's
    ``interpolate(mode="nearest")`` with an integer factor); the gradient sums the block.
    """
    type = "Upsample"
    num_bottoms = (1, 2)

    def setup(self, bottom_shapes):
        p = self.layer_param("upsample_param")
        self.unpool = len(bottom_shapes) == 2
        given = [f for f in _SEGNET_UPSAMPLE if p.HasField(f)]
        if not self.unpool:
            if given:
                raise self.error(f"{given[0]} belongs to SegNet's max-unpooling Upsample, which takes the "
                                 "pooling mask as a second bottom; found one bottom")
            self.scale = p.scale if p.HasField("scale") else YOLO_SCALE
            if self.scale < 1:
                raise self.error(f"scale must be at least 1, found {self.scale}")
            return
        data, mask = (tuple(s) for s in bottom_shapes)
        if len(data) != 4 or data != mask:
            raise self.error(f"needs data and mask of one (N, C, H, W) shape, found {data} and {mask}")
        self.size = self._unpool_size(p, data[2:])

    def _unpool_size(self, p, in_hw):
        """SegNet's output size rules (upsample_layer.cpp LayerSetUp and Reshape)."""
        if p.HasField("upsample_h") and p.HasField("upsample_w"):
            if min(p.upsample_h, p.upsample_w) <= 1:
                raise self.error(f"upsample_h and upsample_w must exceed 1, found {p.upsample_h}, {p.upsample_w}")
            return p.upsample_h, p.upsample_w
        per_axis = p.HasField("scale_h") or p.HasField("scale_w")
        if per_axis and (p.HasField("scale") or not (p.HasField("scale_h") and p.HasField("scale_w"))):
            raise self.error("give upsample_h and upsample_w, or scale, or both scale_h and scale_w")
        scales = (p.scale_h, p.scale_w) if per_axis else (p.scale, p.scale)
        pads = (p.pad_out_h, p.pad_out_w)
        if min(scales) <= 1:
            raise self.error(f"scale must exceed 1, found {scales}")
        if any(pad and s != 2 for pad, s in zip(pads, scales)):
            raise self.error(f"pad_out_h/pad_out_w need scale 2 on their axis, found scale {scales}")
        return tuple(n * s - int(pad) for n, s, pad in zip(in_hw, scales, pads))

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        if self.unpool:
            return [(n, c) + tuple(self.size)]
        return [(n, c, h * self.scale, w * self.scale)]

    def forward(self, x, mask=None):
        if not self.unpool:
            return x.repeat_interleave(self.scale, 2).repeat_interleave(self.scale, 3)
        size = self.size[0] * self.size[1]
        index = mask.detach().flatten(2).long()
        if index.device.type == "cpu" and index.numel() and (index.min() < 0 or index.max() >= size):
            raise self.error(f"mask index {int(index.min() if index.min() < 0 else index.max())} is outside "
                             f"the {self.size[0]}x{self.size[1]} output: the scale or upsample_h/upsample_w must "
                             f"give the size of the pooling layer's input")
        out = _Unpool.apply(x.flatten(2), index, size)
        return out.reshape(x.shape[:2] + tuple(self.size))


@register
class BN(Layer):
    """Per-channel normalization with a learned affine part, (N, C, ...) -> same; the BN layers of
    two forks under one type string, told apart by their bn_param fields (a file recognised as
    one fork's gets the field that says so, see protocaffe.dialects.segnet / pspnet).

    SegNet / ENet (scale_filler, shift_filler, bn_mode): blobs scale and shift (1, C, 1, 1).
    LEARN: y = scale (x - mean) / sqrt(var + 1e-9) + shift with the batch's mean and
    var = E[x^2] - E[x]^2 over (N, H, W), in every phase (the fork never reads the phase;
    its deploy nets fold the statistics in offline and switch to INFERENCE); optional tops 1
    and 2 give mean and var, (1, C, 1, 1), without gradient. INFERENCE: y = scale x + shift.

    PSPNet (slope_filler, bias_filler, momentum, eps, frozen, engine): blobs slope, bias and
    the running mean and variance (1, C, 1, 1), those two never learned. In TRAIN and not
    ``frozen`` the batch's mean and biased variance normalize, and the running ones become
    (1 - momentum) batch + momentum running (no unbiasing, unlike BatchNorm); otherwise the
    running ones normalize. y = slope (x - mean) / sqrt(var + eps) + bias. ``frozen`` keeps
    slope and bias unlearned too, as the fork sets their lr_mult to 0. Where the fork runs
    its batch-statistics backward on a non-frozen TEST net, the gradient here is the
    derivative of the TEST forward.
    """
    type = "BN"
    num_tops = (1, 3)

    def setup(self, bottom_shapes):
        p = self.layer_param("bn_param")
        segnet = [f for f in _SEGNET_BN if p.HasField(f)]
        pspnet = [f for f in _PSPNET_BN if p.HasField(f)]
        if segnet and pspnet:
            raise self.error(f"bn_param mixes SegNet's {segnet[0]} with PSPNet's {pspnet[0]}")
        if not segnet and not pspnet:
            raise self.error("cannot tell SegNet's BN from PSPNet's: set bn_param { bn_mode: LEARN } (SegNet, "
                             "ENet) or bn_param { frozen: false } (PSPNet); a file recognised as one of "
                             "those forks gets it set")
        shape = (1, bottom_shapes[0][1], 1, 1)
        self.segnet = bool(segnet)
        if self.segnet:
            self.learn = p.bn_mode == segnet_pb2.BNParameter.LEARN
            if not self.learn and len(self.param.top) > 1:
                raise self.error(f"bn_mode INFERENCE has one top, found {len(self.param.top)}")
            self.add_blob("weight", shape, p.scale_filler)
            self.add_blob("bias", shape, p.shift_filler)
            return
        if len(self.param.top) > 1:
            raise self.error(f"PSPNet's BN has one top, found {len(self.param.top)}")
        self.frozen, self.momentum, self.eps = p.frozen, p.momentum, p.eps
        self.add_blob("weight", shape, p.slope_filler, trainable=not self.frozen)
        self.add_blob("bias", shape, p.bias_filler, trainable=not self.frozen)
        self.add_blob("mean", shape, trainable=False)
        self.add_blob("variance", shape, caffe_pb2.FillerParameter(value=1 if self.frozen else 0),
                      trainable=False)

    def top_shapes(self, bottom_shapes):
        stats = (1, bottom_shapes[0][1], 1, 1)
        return [bottom_shapes[0]] + [stats] * (len(self.param.top) - 1)

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        weight, bias = self.weight.reshape(view), self.bias.reshape(view)
        if self.segnet:
            return self._segnet(x, weight, bias)
        dims = [0] + list(range(2, x.dim()))
        if self.frozen or self.phase == caffe_pb2.TEST:
            mean, var = self.mean.reshape(view), self.variance.reshape(view)
        else:
            mean = x.mean(dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dims, keepdim=True)
            with torch.no_grad():
                self.mean.mul_(self.momentum).add_(mean.detach().reshape(self.mean.shape), alpha=1 - self.momentum)
                self.variance.mul_(self.momentum).add_(var.detach().reshape(self.mean.shape), alpha=1 - self.momentum)
        return (x - mean) * (var + self.eps).rsqrt() * weight + bias

    def _segnet(self, x, weight, bias):
        if not self.learn:
            return x * weight + bias
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims, keepdim=True)
        var = (x * x).mean(dims, keepdim=True) - mean * mean
        y = (x - mean) / torch.sqrt(var + SEGNET_EPS) * weight + bias
        stats = (mean.detach().reshape(self.weight.shape), var.detach().reshape(self.weight.shape))
        return (y,) + stats[:len(self.param.top) - 1] if len(self.param.top) > 1 else y


def _interp_axis(size_in, size_out):
    """PSPNet's caffe_cpu_interp2 along one axis, in its float32 arithmetic: for each output
    position the source row h1, the step to the next row (0 at the last) and the weight of
    that next row: r = (in - 1) / (out - 1), h1r = r * i, h1 = (int) h1r, lambda = h1r - h1."""
    ratio = np.float32(size_in - 1) / np.float32(size_out - 1) if size_out > 1 else np.float32(0)
    position = ratio * np.arange(size_out, dtype=np.float32)
    first = position.astype(np.int64)
    step = (first < size_in - 1).astype(np.int64)
    return first, step, position - first.astype(np.float32)


@register
class Interp(Layer):
    """Bilinear resizing with corners aligned (PSPNet, DeepLab v2), (N, C, H, W) -> (N, C, H', W').

    The input is first cropped by ``pad_beg`` (at the start) and ``pad_end`` (at the end) on both
    axes (both <= 0): H_eff = H + pad_beg + pad_end. Then, as the fork tries them in turn:
    shrink_factor only: H' = (H_eff - 1) / shrink + 1; zoom_factor only: H' = H_eff + (H_eff - 1)
    (zoom - 1); height and width: those; both factors: shrink, then zoom. An output of the
    cropped size is a plain crop. Otherwise output (i, j) reads the input at (r_h i, r_w j),
    r = (in - 1) / (out - 1) (0 for a one-pixel output), bilinearly, in the fork's float32
    index arithmetic; the same as PyTorch's ``interpolate(mode="bilinear", align_corners=True)``
    up to rounding. The gradient is the exact adjoint, as the fork's backward.
    """
    type = "Interp"

    def setup(self, bottom_shapes):
        p = self.layer_param("interp_param")
        if p.pad_beg > 0 or p.pad_end > 0:
            raise self.error(f"pad_beg and pad_end only crop: they must be <= 0, found {p.pad_beg} and {p.pad_end}")
        for factor in ("zoom_factor", "shrink_factor"):
            if p.HasField(factor) and getattr(p, factor) < 1:
                raise self.error(f"{factor} must be at least 1, found {getattr(p, factor)}")
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-axis (N, C, H, W) input, found shape {bottom_shapes[0]}")
        self.pad_beg, self.pad_end = p.pad_beg, p.pad_end
        self.top_shapes(bottom_shapes)

    def _sizes(self, h, w):
        """(cropped input size, output size), each (height, width)."""
        p = self.layer_param("interp_param")
        cropped = (h + self.pad_beg + self.pad_end, w + self.pad_beg + self.pad_end)
        if min(cropped) <= 0:
            raise self.error(f"pad_beg {self.pad_beg} and pad_end {self.pad_end} crop the {h}x{w} input to nothing")
        shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
        if shrink:
            out = tuple((n - 1) // p.shrink_factor + 1 for n in cropped)
        if zoom:
            out = tuple(n + (n - 1) * (p.zoom_factor - 1) for n in (out if shrink else cropped))
        if not (shrink or zoom):
            if not (p.HasField("height") and p.HasField("width")):
                raise self.error("interp_param needs zoom_factor, shrink_factor, or height and width")
            out = (p.height, p.width)
        if min(out) <= 0:
            raise self.error(f"output size {out} must be positive")
        return cropped, out

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        return [(n, c) + self._sizes(h, w)[1]]

    def forward(self, x):
        (h, w), (out_h, out_w) = self._sizes(*x.shape[2:])
        start = -self.pad_beg
        x = x[:, :, start:start + h, start:start + w]
        if (h, w) == (out_h, out_w):
            return x
        rows, row_step, row_weight = (torch.from_numpy(a).to(x.device) for a in _interp_axis(h, out_h))
        cols, col_step, col_weight = (torch.from_numpy(a).to(x.device) for a in _interp_axis(w, out_w))
        row_weight = row_weight.to(x.dtype)[:, None]
        col_weight = col_weight.to(x.dtype)
        top, bottom = x.index_select(2, rows), x.index_select(2, rows + row_step)

        def across(t):
            return (1 - col_weight) * t.index_select(3, cols) + col_weight * t.index_select(3, cols + col_step)
        return (1 - row_weight) * across(top) + row_weight * across(bottom)
