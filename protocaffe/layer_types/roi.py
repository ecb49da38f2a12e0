"""Pooling over regions of interest: Faster R-CNN's ``ROIPooling`` and R-FCN's ``PSROIPooling``.

Both take features (N, C, H, W) and regions (R, 5), each row ``[batch index, x1, y1, x2, y2]``
in input-image pixels (``spatial_scale`` brings them to the feature map), and pool a fixed grid
of bins per region. Regions get no gradient, as in the forks. The arithmetic is the forks'
CUDA kernels' (caffe-fast-rcnn roi_pooling_layer.cu, caffe-rfcn psroi_pooling_layer.cu), in
the features' dtype: C's ``round`` (half away from zero, not PyTorch's half to even), float
bin edges, integer bins [start, end) clipped to the map, and an empty bin giving 0.
"""
import torch

from protocaffe.layer_types.base import Layer, count, register
from protocaffe.proto.forks import faster_rcnn_pb2, rfcn_pb2  # noqa: F401 (the layers' parameters)

FLT_MAX = 3.4028234663852886e38


def c_round(x):
    """C's round(): halves away from zero. The sum is made in float64, exact for float32 values."""
    y = x.double()
    return (torch.sign(y) * torch.floor(y.abs() + 0.5)).to(x.dtype)


def _rois(layer, bottom_shapes):
    """The number of regions, checking the (R, 5) layout of bottom 1."""
    shape = bottom_shapes[1]
    if not shape or count(shape) != shape[0] * 5:
        raise layer.error(f"bottom 1 holds regions as rows [batch, x1, y1, x2, y2]: shape (R, 5), found {shape}")
    return shape[0]


def _bins(size, n, dtype, start=None):
    """Bin edges along one axis for every region of extent ``size`` (R,): bin p spans
    floor(p * bin + start) .. ceil((p + 1) * bin + start) with bin = size / n, in ``dtype``
    as the forks compute it; without ``start`` (ROIPooling adds its integer start after)."""
    step = size.to(dtype) / torch.tensor(float(n), dtype=dtype)
    p = torch.arange(n, dtype=dtype, device=step.device)
    lo, hi = p[None] * step[:, None], (p[None] + 1) * step[:, None]
    if start is not None:
        lo, hi = lo + start[:, None], hi + start[:, None]
    return torch.floor(lo).long(), torch.ceil(hi).long()


@register
class ROIPooling(Layer):
    """Max over each bin of each region: features (N, C, H, W), rois (R, 5) -> (R, C, pooled_h, pooled_w).

    ``roi_pooling_param``: ``pooled_h``, ``pooled_w`` (both > 0), ``spatial_scale``. A region's
    corners are round(x * spatial_scale) (scaled, then rounded; the end cell included), its
    size max(end - start + 1, 1); bin p spans [floor(p * size / pooled), ceil((p + 1) * size /
    pooled)) from the start, clipped to the map, so neighbouring bins may share a cell. The
    first maximum in row-major order wins; an empty bin is 0. Unlike torchvision's roi_pool
    (the same idea) this is the fork's rounding exactly. Backward (the fork's GPU kernel): each
    bin's gradient goes to its argmax cell, counted only where the cell lies inside the
    region's rounded box (so a malformed region, forced to 1 x 1, passes no gradient).
    """
    type = "ROIPooling"
    num_bottoms = 2

    def setup(self, bottom_shapes):
        p = self.layer_param("roi_pooling_param")
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise self.error(f"roi_pooling_param needs pooled_h > 0 and pooled_w > 0, found "
                             f"pooled_h {p.pooled_h}, pooled_w {p.pooled_w}")
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"bottom 0 must be features (N, C, H, W), found shape {bottom_shapes[0]}")
        _rois(self, bottom_shapes)
        self.pooled = (p.pooled_h, p.pooled_w)
        self.scale = p.spatial_scale

    def top_shapes(self, bottom_shapes):
        return [(_rois(self, bottom_shapes), bottom_shapes[0][1], *self.pooled)]

    def forward(self, x, rois):
        return _ROIMax.apply(x, rois.detach().reshape(-1, 5), self)

    def boxes(self, rois, dtype):
        """Per region: its batch index and rounded corners (x1, y1, x2, y2), all (R,) longs."""
        rois = rois.to(dtype)
        corners = c_round(rois[:, 1:] * torch.tensor(self.scale, dtype=dtype)).long()
        return (rois[:, 0].long(), *corners.unbind(1))

    def pool(self, x, rois):
        """(max values (R, C, ph, pw), argmax h * W + w or -1, the regions' boxes)."""
        n, c, h, w = x.shape
        b, x1, y1, x2, y2 = self.boxes(rois, x.dtype)
        if ((b < 0) | (b >= n)).any():
            raise self.error(f"a region's batch index is outside [0, {n}): found {b[(b < 0) | (b >= n)][0]}")
        (ph, pw), one = self.pooled, torch.ones_like(x1)
        hs, he = _bins(torch.maximum(y2 - y1 + 1, one), ph, x.dtype)
        ws, we = _bins(torch.maximum(x2 - x1 + 1, one), pw, x.dtype)
        hs, he = (hs + y1[:, None]).clamp(0, h), (he + y1[:, None]).clamp(0, h)
        ws, we = (ws + x1[:, None]).clamp(0, w), (we + x1[:, None]).clamp(0, w)
        best = torch.full((len(b), ph, pw, c), -FLT_MAX, dtype=x.dtype, device=x.device)
        arg = torch.full(best.shape, -1, dtype=torch.long, device=x.device)
        for i in range(int((he - hs).max().clamp(min=0)) if len(b) else 0):
            row = (hs + i)[:, :, None]
            for j in range(int((we - ws).max().clamp(min=0))):
                col = (ws + j)[:, None, :]
                inside = ((row < he[:, :, None]) & (col < we[:, None, :]))[..., None]
                v = x[b[:, None, None], :, row.clamp(max=h - 1), col.clamp(max=w - 1)]
                better = inside & (v > best)  # strict: the first maximum wins
                best = torch.where(better, v, best)
                arg = torch.where(better, (row * w + col)[..., None], arg)
        empty = ((he <= hs)[:, :, None] | (we <= ws)[:, None, :])[..., None]
        best = torch.where(empty, torch.zeros((), dtype=x.dtype, device=x.device), best)
        arg = torch.where(empty, -1, arg)
        return best.permute(0, 3, 1, 2).contiguous(), arg.permute(0, 3, 1, 2).contiguous(), (b, x1, y1, x2, y2)


class _ROIMax(torch.autograd.Function):
    """ROIPooling's forward, and its fork's backward: top diffs summed into argmax cells."""

    @staticmethod
    def forward(ctx, x, rois, layer):
        top, arg, (b, x1, y1, x2, y2) = layer.pool(x, rois)
        width = x.shape[3]
        h, w = arg // width, arg % width
        inside = ((arg >= 0) & (w >= x1[:, None, None, None]) & (w <= x2[:, None, None, None])
                  & (h >= y1[:, None, None, None]) & (h <= y2[:, None, None, None]))
        ctx.save_for_backward(arg, b, inside)
        ctx.shape = x.shape
        return top

    @staticmethod
    def backward(ctx, grad):
        arg, b, inside = ctx.saved_tensors
        n, c, h, w = ctx.shape
        channel = torch.arange(c, device=grad.device)[None, :, None, None]
        cell = ((b[:, None, None, None] * c + channel) * (h * w) + arg)[inside]
        dx = torch.zeros(n * c * h * w, dtype=grad.dtype, device=grad.device)
        dx.index_add_(0, cell, grad[inside])
        return dx.reshape(ctx.shape), None, None


@register
class PSROIPooling(Layer):
    """Position-sensitive average pooling: features (N, output_dim * group_size^2, H, W),
    rois (R, 5) -> (R, output_dim, group_size, group_size).

    ``psroi_pooling_param``: ``spatial_scale``, ``output_dim``, ``group_size`` (all required).
    Bin (i, j) of output channel k averages input channel (k * group_size + i) * group_size + j
    over its cells. A region's corners are rounded first and then scaled, its end one past the
    rounded corner: start = round(x1) * s, end = (round(x2) + 1) * s, as floats; its size at
    least 0.1; bin p spans [floor(start + p * bin), ceil(start + (p + 1) * bin)) clipped to the
    map; an empty bin is 0. The gradient (the fork's: each bin's diff spread evenly over its
    cells) is autograd's of this average.
    """
    type = "PSROIPooling"
    num_bottoms = 2

    def setup(self, bottom_shapes):
        p = self.layer_param("psroi_pooling_param")
        missing = [f for f in ("spatial_scale", "output_dim", "group_size") if not p.HasField(f)]
        if missing:
            raise self.error(f"psroi_pooling_param needs {', '.join(missing)} (required in R-FCN's caffe.proto)")
        if p.output_dim <= 0 or p.group_size <= 0:
            raise self.error(f"psroi_pooling_param needs output_dim > 0 and group_size > 0, found "
                             f"{p.output_dim} and {p.group_size}")
        shape = bottom_shapes[0]
        if len(shape) != 4 or shape[1] != p.output_dim * p.group_size ** 2:
            raise self.error(f"bottom 0 must be (N, output_dim * group_size^2 = "
                             f"{p.output_dim * p.group_size ** 2}, H, W), found shape {shape}")
        _rois(self, bottom_shapes)
        self.scale, self.dim, self.group = p.spatial_scale, p.output_dim, p.group_size

    def top_shapes(self, bottom_shapes):
        return [(_rois(self, bottom_shapes), self.dim, self.group, self.group)]

    def forward(self, x, rois):
        n, _, h, w = x.shape
        rois = rois.detach().reshape(-1, 5).to(x.dtype)
        b = rois[:, 0].long()
        if ((b < 0) | (b >= n)).any():
            raise self.error(f"a region's batch index is outside [0, {n}): found {b[(b < 0) | (b >= n)][0]}")
        scale = torch.tensor(self.scale, dtype=x.dtype)
        start = c_round(rois[:, 1:3]) * scale
        end = (c_round(rois[:, 3:5]) + 1) * scale
        size = torch.maximum(end - start, torch.tensor(0.1, dtype=x.dtype))
        ws, we = (e.clamp(0, w) for e in _bins(size[:, 0], self.group, x.dtype, start[:, 0]))
        hs, he = (e.clamp(0, h) for e in _bins(size[:, 1], self.group, x.dtype, start[:, 1]))
        # sums over rectangles from a summed-area table (in float64: no cancellation)
        table = torch.zeros(n, x.shape[1], h + 1, w + 1, dtype=torch.float64, device=x.device)
        table[:, :, 1:, 1:] = x.double().cumsum(2).cumsum(3)
        g = self.group
        channel = (torch.arange(self.dim, device=x.device)[:, None, None] * g
                   + torch.arange(g, device=x.device)[None, :, None]) * g + torch.arange(g, device=x.device)
        bb = b[:, None, None, None]
        r0, r1 = hs[:, None, :, None], he[:, None, :, None]
        c0, c1 = ws[:, None, None, :], we[:, None, None, :]
        total = (table[bb, channel, r1, c1] - table[bb, channel, r0, c1]
                 - table[bb, channel, r1, c0] + table[bb, channel, r0, c0])
        area = ((r1 - r0) * (c1 - c0)).to(torch.float64)
        out = torch.where(area > 0, total / area.clamp(min=1), torch.zeros((), dtype=torch.float64, device=x.device))
        return out.to(x.dtype)
