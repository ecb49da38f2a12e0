"""Layers that pick items along the batch axis by data: Filter, BatchReindex."""
from protocaffe.layer_types.base import Layer, register


@register
class Filter(Layer):
    """Keeps the items whose selector is non-zero: bottoms x_1..x_k (N, ...) and a selector
    (N,) or (N, 1, ...) -> tops (M, ...) for the M items selected, in order.

    The top's size depends on the data. As in Caffe, whose first Reshape (before any
    data) gives every top its bottom's shape, the net's inferred shape of each top is
    its bottom's, an upper bound; the tensors a forward returns have M items. Layers
    after a Filter must therefore accept any batch size (M may be 0). Gradients flow
    to the selected items (zero for the others); the selector gets none.
    """
    type = "Filter"
    batch_from_data = True
    num_bottoms = (2, None)
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        if len(self.param.top) != len(bottom_shapes) - 1:
            raise self.error(f"needs one top per filtered bottom ({len(bottom_shapes) - 1}), "
                             f"found {len(self.param.top)}")
        selector = bottom_shapes[-1]
        if not selector or any(d != 1 for d in selector[1:]):
            raise self.error(f"the selector (last bottom) must have shape (N,) or (N, 1, ...), "
                             f"found {selector}")
        for name, shape in zip(self.param.bottom, bottom_shapes[:-1]):
            if not shape or shape[0] != selector[0]:
                raise self.error(f"bottom '{name}' has shape {shape}; its first axis must equal the "
                                 f"selector's {selector[0]}")

    def top_shapes(self, bottom_shapes):
        return [tuple(s) for s in bottom_shapes[:-1]]

    def forward(self, *bottoms):
        *xs, selector = bottoms
        keep = selector.detach().reshape(selector.shape[0]).nonzero().flatten()
        out = tuple(x.index_select(0, keep) for x in xs)
        return out[0] if len(out) == 1 else out


@register
class BatchReindex(Layer):
    """Gathers items of x (N, ...) by an index bottom (M,) of floats -> (M, ...).

    ``top[i] = x[int(index[i])]``; indices may repeat or skip items. The gradient of
    an item sums over every place it was gathered to (zero if never); the index gets none.
    """
    type = "BatchReindex"
    num_bottoms = 2

    def setup(self, bottom_shapes):
        if len(bottom_shapes[1]) != 1:
            raise self.error(f"the index (bottom 1) must have one axis, found shape {bottom_shapes[1]}")
        if not bottom_shapes[0]:
            raise self.error("bottom 0 needs at least one axis")

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[1][:1]) + tuple(bottom_shapes[0][1:])]

    def forward(self, x, index):
        index = index.detach()
        if index.numel() and (index.min() < 0 or index.max() >= x.shape[0]):
            raise self.error(f"indices must lie in [0, {x.shape[0]}), found "
                             f"[{float(index.min())}, {float(index.max())}]")
        return x.index_select(0, index.long())
