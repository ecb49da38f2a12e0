"""R-FCN's online hard example mining (Microsoft/caffe @1a2be8ec, daijifeng001/caffe-rfcn):
per-region losses, and the layer that keeps only the hardest regions of each image.

The training net scores every region with ``SoftmaxWithLossOHEM`` and ``SmoothL1LossOHEM``
(their per-region tops, loss weight 0), sums them (Eltwise), lets ``BoxAnnotatorOHEM`` keep
the ``roi_per_img`` hardest regions of each image (their labels and box weights; the rest
ignored), and trains on those with the ordinary losses.
"""
import torch

from protocaffe.layer_types.base import Layer, legacy_shape, register
from protocaffe.layer_types.loss import LossParameter, SoftmaxWithLoss, _Loss, normalization_mode, normalizer, pre_fixed
from protocaffe.layer_types.multibox import smooth_l1
from protocaffe.proto.forks import rfcn_pb2  # noqa: F401 (the layers' parameters)


class _RFCNSmoothL1(torch.autograd.Function):
    """R-FCN's smooth L1 on d = w (a - b): forward sum(f(d)) / norm; backward +-f'(d) / norm
    (f'(d) = d inside |d| < 1, else sign(d)), not multiplied by w."""

    @staticmethod
    def forward(ctx, a, b, w, norm):
        d = a - b if w is None else w * (a - b)
        ctx.save_for_backward(d)
        ctx.norm = norm
        return smooth_l1(d).sum() / norm

    @staticmethod
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        slope = torch.where(d.abs() < 1, d, torch.sign(d)) * (grad / ctx.norm)
        return slope, -slope, None, None


def rfcn_smooth_l1(layer, a, b, w=None):
    """R-FCN's SmoothL1Loss (caffe-rfcn's 2-3 bottom layer, Microsoft's SmoothL1LossOHEM) with
    ``layer``'s loss_param: (loss, per-position loss (N, 1, H, W) without gradient)."""
    n, _, h, wd = legacy_shape(a.shape)
    lp = layer.param.loss_param
    mode = normalization_mode(lp)
    # FULL and VALID both count N * H * W (not channels); VALID has no ignored positions here
    norm = normalizer(LossParameter.FULL if mode == LossParameter.VALID else mode, n, h * wd, None, pre_fixed(lp))
    loss = _RFCNSmoothL1.apply(a, b, w, norm)
    with torch.no_grad():
        d = a - b if w is None else w * (a - b)
        each = smooth_l1(d).reshape(n, -1, h * wd).sum(1).reshape(n, 1, h, wd)
    return loss, each


@register
class SmoothL1LossOHEM(_Loss):
    """R-FCN's smooth L1 (Microsoft/caffe): pred, target [, weights] (N, C, H, W) -> () [, per
    region (N, 1, H, W)].

    d = weights * (pred - target); loss = sum(0.5 d^2 if |d| < 1 else |d| - 0.5) divided per
    ``loss_param.normalization``: FULL and VALID by N * H * W (channels not counted),
    BATCH_SIZE by N, PRE_FIXED by ``pre_fixed_normalizer``, NONE by 1 (at least 1). No sigma.
    The second top is each position's loss summed over channels (no gradient). Backward, the
    fork's: +-f'(d) / normalizer for pred and target, not multiplied by the weights (exact
    for 0/1 weights); the weights get none.
    """
    type = "SmoothL1LossOHEM"
    num_bottoms = (2, 3)
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        first = legacy_shape(bottom_shapes[0])
        for i, shape in enumerate(bottom_shapes[1:], 1):
            if legacy_shape(shape)[1:] != first[1:]:
                raise self.error(f"bottom {i} must match bottom 0 in channels, height and width: "
                                 f"found shapes {bottom_shapes[0]} and {shape}")

    def top_shapes(self, bottom_shapes):
        n, _, h, w = legacy_shape(bottom_shapes[0])
        return [(), (n, 1, h, w)][:len(self.param.top)]

    def forward(self, pred, target, weights=None):
        loss, each = rfcn_smooth_l1(self, pred, target.reshape(pred.shape),
                                    None if weights is None else weights.detach().reshape(pred.shape))
        return loss if len(self.param.top) == 1 else (loss, each)


@register
class SoftmaxWithLossOHEM(SoftmaxWithLoss):
    """Microsoft/caffe's name for R-FCN's SoftmaxWithLoss with a third top, the loss of each
    position (see SoftmaxWithLoss)."""
    type = "SoftmaxWithLossOHEM"


@register
class BoxAnnotatorOHEM(Layer):
    """Keeps the hardest regions of each image: rois (R, 5), loss (R), labels (R),
    bbox_weights (R, B) -> labels (R, 1), bbox_weights (R, B) (H, W axes allowed: (R, ., H, W)).

    ``box_annotator_ohem_param``: ``roi_per_img``, ``ignore_label``. Regions are taken in order
    of falling loss, each while its image (rois[:, 0]) has fewer than ``roi_per_img`` taken;
    a taken region keeps its label and box weights, the others get ``ignore_label`` and 0.
    The fork sorts with std::sort, whose order among equal losses is unspecified; here equal
    losses keep their region order. No gradient.
    """
    type = "BoxAnnotatorOHEM"
    num_bottoms = 4
    num_tops = 2

    def setup(self, bottom_shapes):
        p = self.layer_param("box_annotator_ohem_param")
        if p.roi_per_img <= 0:
            raise self.error(f"box_annotator_ohem_param needs roi_per_img > 0, found {p.roi_per_img}")
        self.per_image, self.ignore = p.roi_per_img, p.ignore_label
        n, c, h, w = legacy_shape(bottom_shapes[0])
        if c != 5:
            raise self.error(f"bottom 0 holds regions as rows [batch, x1, y1, x2, y2], found shape {bottom_shapes[0]}")
        for i, what in ((1, "loss"), (2, "labels")):
            if legacy_shape(bottom_shapes[i]) != (n, 1, h, w):
                raise self.error(f"bottom {i} ({what}) must have one value per region, shape ({n}, 1, {h}, {w}); "
                                 f"found {bottom_shapes[i]}")
        nb, _, hb, wb = legacy_shape(bottom_shapes[3])
        if (nb, hb, wb) != (n, h, w):
            raise self.error(f"bottom 3 (box weights) must be ({n}, B, {h}, {w}), found {bottom_shapes[3]}")

    def top_shapes(self, bottom_shapes):
        n, _, h, w = legacy_shape(bottom_shapes[0])
        return [(n, 1, h, w), legacy_shape(bottom_shapes[3])]

    def forward(self, rois, loss, labels, weights):
        n, _, h, w = legacy_shape(rois.shape)
        image = rois.detach().reshape(n, 5, h * w)[:, 0].reshape(-1).long()
        order = torch.sort(loss.detach().reshape(-1), descending=True, stable=True).indices.tolist()
        left = [self.per_image] * (int(image.max()) + 1 if len(image) else 0)
        keep = torch.zeros(len(order), dtype=torch.bool)
        for i in order:
            img = int(image[i])
            if left[img] > 0:
                left[img] -= 1
                keep[i] = True
        keep = keep.to(rois.device)
        out_labels = torch.where(keep, labels.detach().reshape(-1),
                                 torch.tensor(float(self.ignore), dtype=labels.dtype, device=labels.device))
        wt = weights.detach().reshape(n, -1, h * w)
        kept = keep.reshape(n, 1, h * w)
        out_weights = torch.where(kept, wt, torch.zeros((), dtype=wt.dtype, device=wt.device))
        return out_labels.reshape(n, 1, h, w), out_weights.reshape(legacy_shape(weights.shape))
