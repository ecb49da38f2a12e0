"""Blob-shuffling layers: Concat, Eltwise, Flatten, Reshape, Permute (SSD), Slice, Split, Silence,
Tile, Reduction, ArgMax."""
import torch

from protocaffe.layer_types.base import Layer, canonical_axis, count, register
from protocaffe.proto import caffe_pb2

EltwiseOp = caffe_pb2.EltwiseParameter
ReductionOp = caffe_pb2.ReductionParameter


def _one_axis(layer, p, legacy):
    """Caffe refuses ``axis`` together with the legacy ``concat_dim``/``slice_dim``."""
    if p.HasField("axis") and p.HasField(legacy):
        raise layer.error(f"give axis or {legacy}, not both; found axis: {p.axis} and "
                          f"{legacy}: {getattr(p, legacy)}")


@register
class Concat(Layer):
    """Joins bottoms along ``axis`` (legacy ``concat_dim`` if set); other axes must agree."""
    type = "Concat"
    num_bottoms = (1, None)

    def setup(self, bottom_shapes):
        p = self.param.concat_param
        _one_axis(self, p, "concat_dim")
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        first = bottom_shapes[0]
        self.axis = canonical_axis(axis, len(first), self)
        for i, shape in enumerate(bottom_shapes[1:], 1):
            if len(shape) != len(first) or any(a != b for d, (a, b) in enumerate(zip(shape, first))
                                               if d != self.axis):
                raise self.error(f"bottom {i} has shape {shape}, which does not match bottom 0's "
                                 f"{first} outside axis {self.axis}")

    def top_shapes(self, bottom_shapes):
        shape = list(bottom_shapes[0])
        shape[self.axis] = sum(s[self.axis] for s in bottom_shapes)
        return [tuple(shape)]

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis) if len(xs) > 1 else xs[0]


@register
class Eltwise(Layer):
    """Elementwise PROD, SUM (with one ``coeff`` per bottom) or MAX of same-shape bottoms.

    MAX picks as Caffe does, and sends the gradient to the bottom it picked: between bottoms
    0 and 1 a tie goes to bottom 1; each later bottom takes over only where strictly greater.
    """
    type = "Eltwise"
    num_bottoms = (2, None)

    def setup(self, bottom_shapes):
        p = self.param.eltwise_param
        if any(s != bottom_shapes[0] for s in bottom_shapes):
            raise self.error(f"bottoms must all have one shape, found {bottom_shapes}")
        if len(p.coeff) not in (0, len(bottom_shapes)):
            raise self.error(f"needs one coeff per bottom ({len(bottom_shapes)}), found {len(p.coeff)}")
        if len(p.coeff) and p.operation != EltwiseOp.SUM:
            raise self.error("coeff is only for operation SUM")
        self.op = p.operation
        self.coeff = list(p.coeff) or [1.0] * len(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, *xs):
        if self.op == EltwiseOp.SUM:
            out = xs[0] * self.coeff[0] if self.coeff[0] != 1 else xs[0]
            for c, x in zip(self.coeff[1:], xs[1:]):
                out = out + (c * x if c != 1 else x)
            return out
        if self.op == EltwiseOp.PROD:
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return out
        return self._max(xs)

    @staticmethod
    def _max(xs):
        with torch.no_grad():
            best = torch.where(xs[0] > xs[1], 0, 1)
            value = torch.maximum(xs[0], xs[1])
            for i, x in enumerate(xs[2:], 2):
                best = torch.where(x > value, i, best)
                value = torch.maximum(value, x)
        return torch.stack(xs).gather(0, best.unsqueeze(0)).squeeze(0)


@register
class Flatten(Layer):
    """Merges axes ``axis`` .. ``end_axis`` into one: (2, 3, 4, 5) -> (2, 60) by default."""
    type = "Flatten"

    def setup(self, bottom_shapes):
        p, n = self.param.flatten_param, len(bottom_shapes[0])
        self.start, self.end = canonical_axis(p.axis, n, self), canonical_axis(p.end_axis, n, self)
        if self.end + 1 < self.start:
            raise self.error(f"end_axis ({p.end_axis}, axis {self.end}) comes before axis ({p.axis}, "
                             f"axis {self.start}) of a {n}-axis bottom")

    def top_shapes(self, bottom_shapes):
        """As Caffe: with end_axis just before axis, the merged (empty) range becomes a new axis of 1."""
        s = bottom_shapes[0]
        return [tuple(s[:self.start]) + (count(s, self.start, self.end + 1),) + tuple(s[self.end + 1:])]

    def forward(self, x):
        return x.reshape(self.top_shapes([tuple(x.shape)])[0])


@register
class Reshape(Layer):
    """Replaces axes ``axis`` .. ``axis + num_axes`` by ``shape``; 0 copies the bottom's
    dimension, one -1 is inferred from the count."""
    type = "Reshape"

    def setup(self, bottom_shapes):
        p = self.param.reshape_param
        dims = list(p.shape.dim)
        if dims.count(-1) > 1:
            raise self.error(f"shape may infer (-1) at most one axis, found {dims}")
        n = len(bottom_shapes[0])
        self.start = p.axis + n + 1 if p.axis < 0 else p.axis
        if not 0 <= self.start <= n:
            raise self.error(f"axis {p.axis} out of range for a {n}-axis bottom")
        self.end = n if p.num_axes == -1 else self.start + p.num_axes
        if self.end > n:
            raise self.error(f"axis {p.axis} + num_axes {p.num_axes} exceeds the bottom's {n} axes")
        self.dims = dims

    def _shape(self, shape):
        for i, d in enumerate(self.dims):
            if d == 0 and self.start + i >= len(shape):
                raise self.error(f"shape dim {i} is 0 (copy the bottom's axis {self.start + i}), but the "
                                 f"bottom {tuple(shape)} has no such axis")
        middle = [shape[self.start + i] if d == 0 else d for i, d in enumerate(self.dims)]
        out = list(shape[:self.start]) + middle + list(shape[self.end:])
        if -1 in out:
            known = count([d for d in out if d != -1])
            out[out.index(-1)] = count(shape) // max(known, 1)
        if count(out) != count(shape):
            raise self.error(f"cannot reshape {tuple(shape)} ({count(shape)} values) to {tuple(out)}")
        return tuple(out)

    def top_shapes(self, bottom_shapes):
        return [self._shape(bottom_shapes[0])]

    def forward(self, x):
        return x.reshape(self._shape(tuple(x.shape)))


@register
class Permute(Layer):
    """The SSD fork's transpose: axes reordered as ``permute_param.order``; (N, C, H, W) with
    order 0 2 3 1 -> (N, H, W, C). Axes the order leaves out follow in their own order
    (0 2 on a 4-axis blob is 0 2 1 3). The identity order gives the bottom itself (Caffe
    shares its data and diff)."""
    type = "Permute"

    def setup(self, bottom_shapes):
        n = len(bottom_shapes[0])
        order = list(self.layer_param("permute_param").order)
        for axis in order:
            if axis >= n:
                raise self.error(f"order {axis} is not an axis of a {n}-axis bottom")
        if len(set(order)) != len(order):
            raise self.error(f"order {order} repeats an axis")
        self.order = tuple(order + [a for a in range(n) if a not in order])

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0][a] for a in self.order)]

    def forward(self, x):
        return x if self.order == tuple(range(x.dim())) else x.permute(self.order)


@register
class Slice(Layer):
    """Splits the bottom along ``axis`` (legacy ``slice_dim``) at ``slice_point``s, or into
    equal parts, one per top."""
    type = "Slice"
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        p = self.param.slice_param
        _one_axis(self, p, "slice_dim")
        axis = p.slice_dim if p.HasField("slice_dim") else p.axis
        shape = bottom_shapes[0]
        self.axis = canonical_axis(axis, len(shape), self)
        size, tops = shape[self.axis], len(self.param.top)
        points = list(p.slice_point)
        if points:
            if len(points) != tops - 1:
                raise self.error(f"needs {tops - 1} slice points for {tops} tops, found {len(points)}")
            bounds = [0] + points + [size]
        else:
            if size % tops:
                raise self.error(f"axis {self.axis} of size {size} does not split into {tops} equal parts")
            bounds = [i * size // tops for i in range(tops + 1)]
        self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        if any(s <= 0 for s in self.sizes):
            raise self.error(f"slice points {points} must increase within (0, {size})")

    def top_shapes(self, bottom_shapes):
        shape = list(bottom_shapes[0])
        return [tuple(shape[:self.axis] + [s] + shape[self.axis + 1:]) for s in self.sizes]

    def forward(self, x):
        parts = torch.split(x, self.sizes, dim=self.axis)
        return parts if len(parts) > 1 else parts[0]


@register
class Split(Layer):
    """One bottom to several tops (the same values); their gradients add up."""
    type = "Split"
    num_tops = (1, None)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]] * len(self.param.top)

    def forward(self, x):
        return (x,) * len(self.param.top) if len(self.param.top) > 1 else x


@register
class Silence(Layer):
    """Consumes bottoms so they do not count as net outputs; no tops."""
    type = "Silence"
    num_bottoms = (1, None)
    num_tops = 0

    def top_shapes(self, bottom_shapes):
        return []

    def forward(self, *xs):
        return ()


@register
class Tile(Layer):
    """Repeats the bottom ``tiles`` times along ``axis``: (.., d, ..) -> (.., d * tiles, ..)."""
    type = "Tile"

    def setup(self, bottom_shapes):
        p = self.param.tile_param
        self.axis = canonical_axis(p.axis, len(bottom_shapes[0]), self)
        if p.tiles < 1:
            raise self.error(f"tiles must be at least 1, found {p.tiles}")
        self.tiles = p.tiles

    def top_shapes(self, bottom_shapes):
        s = list(bottom_shapes[0])
        s[self.axis] *= self.tiles
        return [tuple(s)]

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return x.repeat(reps)


@register
class Reduction(Layer):
    """Reduces every axis from ``axis`` on: (d0 .. d_{axis-1}, ...) -> (d0 .. d_{axis-1}),
    by SUM, ASUM (sum of |x|), SUMSQ or MEAN, times ``coeff``."""
    type = "Reduction"

    def setup(self, bottom_shapes):
        p = self.param.reduction_param
        self.axis = canonical_axis(p.axis, len(bottom_shapes[0]), self) if bottom_shapes[0] else 0
        self.op, self.coeff = p.operation, p.coeff

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0][:self.axis])]

    def forward(self, x):
        flat = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        if self.op == ReductionOp.ASUM:
            flat = flat.abs()
        elif self.op == ReductionOp.SUMSQ:
            flat = flat * flat
        out = flat.mean(-1) if self.op == ReductionOp.MEAN else flat.sum(-1)
        return out * self.coeff if self.coeff != 1 else out


@register
class ArgMax(Layer):
    """Indices (and with ``out_max_val`` the values) of the ``top_k`` largest entries.

    With ``axis``: along that axis, the axis becoming top_k long (values only when
    out_max_val). Without: over each item's flattened values, giving (N, 1 or 2, top_k)
    padded with 1s to the bottom's number of axes.
    No gradient.
    """
    type = "ArgMax"

    def setup(self, bottom_shapes):
        p = self.param.argmax_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self) if p.HasField("axis") else None
        size = shape[self.axis] if self.axis is not None else count(shape, 1)
        if p.top_k > size:
            raise self.error(f"top_k ({p.top_k}) must not exceed the number of values ({size})")
        self.top_k, self.out_max_val = p.top_k, p.out_max_val

    def top_shapes(self, bottom_shapes):
        shape = list(bottom_shapes[0])
        if self.axis is None:
            return [(shape[0], 2 if self.out_max_val else 1, self.top_k) + (1,) * (len(shape) - 3)]
        shape[self.axis] = self.top_k
        return [tuple(shape)]

    def forward(self, x):
        with torch.no_grad():
            if self.axis is not None:
                values, index = x.topk(self.top_k, dim=self.axis)
                return values if self.out_max_val else index.to(x.dtype)
            values, index = x.reshape(x.shape[0], -1).topk(self.top_k, dim=1)
            parts = [index.to(x.dtype)] + ([values] if self.out_max_val else [])
            out = torch.stack(parts, dim=1)
            return out.reshape(tuple(out.shape) + (1,) * (x.dim() - 3))
