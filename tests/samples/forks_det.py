"""Samples of the detection and face forks' layers (protocaffe/layer_types/roi.py, ohem.py,
yolo.py, face.py) for tests/test_registry.py."""
import torch

from samples.layers import L, distinct
from samples.loss import labels

ROIS = torch.tensor([[0, 0, 0, 11, 9], [1, 2.6, 1.4, 9.5, 7.7], [1, 5, 5, 6, 5], [0, -3, 4, 30, 6]],
                    dtype=torch.float64)
"""Regions (batch, x1, y1, x2, y2) on a 2x spatial scale: whole map, inside, one cell, clipped.
(A malformed region passes no gradient in the fork: tests/test_forks_roi.py.)"""


def regions(i, shape, g):
    return distinct(i, shape, g) if i == 0 else ROIS.clone()


def ohem_bottoms(i, shape, g):
    """rois, losses (distinct), labels, box weights."""
    if i == 0:
        return ROIS[[0, 1, 2, 3, 0, 1]].clone()
    if i == 1:
        return distinct(i, shape, g)
    if i == 2:
        return torch.randint(0, 3, shape, generator=g).double()
    return torch.rand(shape, generator=g, dtype=torch.float64)


def smooth_l1_bottoms(i, shape, g):
    """pred, target (differences away from the kinks at +-1), 0/1 weights."""
    if i == 2:
        return (torch.rand(shape, generator=g) < 0.7).double()
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2


NOGRAD = {"gradcheck": False}
G = 'weight_filler { type: "gaussian" std: 0.3 }'

SAMPLES = {
    "ROIPooling": (L("ROIPooling", "roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.5 }", bottoms=2),
                   [(2, 3, 6, 7), (4, 5)], {"make_bottom": regions, "grad_inputs": [0]}),
    "PSROIPooling": (L("PSROIPooling", "psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 group_size: 2 }",
                       bottoms=2), [(2, 8, 6, 7), (4, 5)], {"make_bottom": regions, "grad_inputs": [0]}),
    "BoxAnnotatorOHEM": (L("BoxAnnotatorOHEM", "box_annotator_ohem_param { roi_per_img: 2 }", bottoms=4, tops=2),
                         [(6, 5), (6,), (6, 1), (6, 8)], {"make_bottom": ohem_bottoms, **NOGRAD}),
    "SmoothL1LossOHEM": (L("SmoothL1LossOHEM", "loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 3 }",
                           bottoms=3, tops=2), [(3, 4, 2, 2)] * 3,
                         {"make_bottom": smooth_l1_bottoms, "grad_inputs": [0, 1]}),
    "SoftmaxWithLossOHEM": (L("SoftmaxWithLossOHEM", "loss_param { ignore_label: 1 }", bottoms=2, tops=3),
                            [(3, 4, 2), (3, 2)], {"make_bottom": labels(4), "grad_inputs": [0]}),
    "Reorg": (L("Reorg", "reorg_param { stride: 2 }"), [(2, 8, 4, 6)]),
    "Region": (L("Region", "region_param { coords: 4 classes: 3 num: 2 }"), [(2, 16, 3, 4)]),
    "MarginInnerProduct": (L("MarginInnerProduct", f"margin_inner_product_param {{ num_output: 4 {G} }}",
                             bottoms=2, tops=2), [(3, 2, 3), (3,)], {"make_bottom": labels(4), "grad_inputs": [0]}),
    "CenterLoss": (L("CenterLoss", 'center_loss_param { num_output: 4 center_filler { type: "gaussian" } }',
                     bottoms=2), [(5, 3, 2), (5,)], {"make_bottom": labels(4), "grad_inputs": [0]}),
}
