"""Samples of the SSD fork's layers: PriorBox, DetectionOutput, DetectionEvaluate
(protocaffe/layer_types/detection.py), MultiBoxLoss and SmoothL1Loss (multibox.py), Permute
(common.py) and Normalize (normalization.py). Boxes come from a 3 x 3 grid of priors of two
sizes; ground truth and detections are fixed rows."""
import torch

from samples.layers import L

GRID = torch.tensor([(x, y, s) for y in (0.2, 0.5, 0.8) for x in (0.2, 0.5, 0.8) for s in (0.3, 0.5)],
                    dtype=torch.float64)
PRIORS = torch.stack([torch.stack([GRID[:, 0] - GRID[:, 2] / 2, GRID[:, 1] - GRID[:, 2] / 2,
                                   GRID[:, 0] + GRID[:, 2] / 2, GRID[:, 1] + GRID[:, 2] / 2], 1).reshape(-1),
                      torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64).repeat(len(GRID))])[None]
P = len(GRID)
GT = torch.tensor([[0, 1, 0, 0.1, 0.1, 0.45, 0.4, 0], [0, 2, 1, 0.5, 0.55, 0.9, 0.95, 0],
                   [1, 1, 0, 0.3, 0.3, 0.7, 0.75, 0], [-1] * 8], dtype=torch.float64)[None, None]
DETECTIONS = torch.tensor([[0, 1, 0.9, 0.1, 0.12, 0.44, 0.4], [0, 1, 0.3, 0.5, 0.5, 0.9, 0.9],
                           [0, 2, 0.8, 0.52, 0.55, 0.9, 0.94], [1, 2, 0.6, 0.3, 0.3, 0.7, 0.7],
                           [2, -1, -1, -1, -1, -1, -1]], dtype=torch.float64)[None, None]


def detection_inputs(i, shape, g):
    if i == 2:
        return PRIORS.clone()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return torch.softmax(x.reshape(shape[0], P, -1), -1).reshape(shape) if i == 1 else 0.5 * x


def multibox_inputs(i, shape, g):
    return PRIORS.clone() if i == 2 else GT.clone() if i == 3 else torch.randn(shape, generator=g, dtype=torch.float64)


NOGRAD = {"gradcheck": False, "dtype": torch.float32}

SAMPLES = {
    "PriorBox": (L("PriorBox", "prior_box_param { min_size: 8 max_size: 16 aspect_ratio: 2 clip: true "
                               "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }", bottoms=2),
                 [(1, 2, 3, 4), (1, 3, 30, 40)], NOGRAD),
    "Permute": (L("Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }"), [(2, 3, 4, 5)]),
    "Normalize": (L("Normalize", 'norm_param { across_spatial: false channel_shared: false '
                                 'scale_filler { type: "constant" value: 2 } }'), [(2, 3, 2, 2)]),
    "SmoothL1Loss": (L("SmoothL1Loss", bottoms=2), [(2, 3, 2), (2, 3, 2)]),
    "DetectionOutput": (L("DetectionOutput", "detection_output_param { num_classes: 3 code_type: CENTER_SIZE "
                                             "nms_param { nms_threshold: 0.45 top_k: 10 } keep_top_k: 5 "
                                             "confidence_threshold: 0.1 }", bottoms=3),
                        [(2, P * 4), (2, P * 3), (1, 2, P * 4)], dict(NOGRAD, make_bottom=detection_inputs)),
    "MultiBoxLoss": (L("MultiBoxLoss", "multibox_loss_param { num_classes: 3 code_type: CENTER_SIZE "
                                       "overlap_threshold: 0.3 neg_pos_ratio: 2 }", bottoms=4),
                     [(2, P * 4), (2, P * 3), (1, 2, P * 4), (1, 1, 4, 8)],
                     {"make_bottom": multibox_inputs, "grad_inputs": [0, 1]}),
    "DetectionEvaluate": (L("DetectionEvaluate", "detection_evaluate_param { num_classes: 3 }", bottoms=2),
                          [(1, 1, 5, 7), (1, 1, 4, 8)],
                          dict(NOGRAD, make_bottom=lambda i, shape, g: (GT if i else DETECTIONS).clone())),
}
