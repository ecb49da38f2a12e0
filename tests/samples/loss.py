"""Samples of Softmax, the loss layers and Accuracy (protocaffe/layer_types/loss.py) for tests/test_registry.py.

Bottom 0 holds scores; later bottoms hold labels (integers stored as floats), which get no gradient.
"""
import torch


def layer(type_, body="", bottoms=2, tops=1):
    b = " ".join(f'bottom: "b{i}"' for i in range(bottoms))
    t = " ".join(f'top: "t{i}"' for i in range(tops))
    return f'name: "l" type: "{type_}" {b} {t} {body}'


def labels(classes, scores=None):
    """Bottom 0 from ``scores`` (default standard normal), later bottoms integer labels in [0, classes)."""
    def make(i, shape, g):
        if i == 0:
            return (scores or (lambda s, g: torch.randn(s, generator=g, dtype=torch.float64)))(shape, g)
        return torch.randint(0, classes, shape, generator=g).double()
    return make


def probabilities(shape, g):
    return torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=1)


def sigmoid_targets(i, shape, g):
    """Scores, then soft targets in [0, 1) with every fourth one -1, the sample's ignore_label."""
    if i == 0:
        return torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    t.view(-1)[::4] = -1
    return t


def pairs(i, shape, g):
    """Two feature batches, then similarity labels 1 0 1 0 ..."""
    if i < 2:
        return torch.randn(shape, generator=g, dtype=torch.float64)
    return (torch.arange(shape[0]) % 2 == 0).double().reshape(shape)


def infogain_bottoms(i, shape, g):
    if i == 2:
        return torch.rand(shape, generator=g, dtype=torch.float64)
    return labels(4)(i, shape, g)


LABEL_ONLY = {"grad_inputs": [0]}

SAMPLES = {
    "Softmax": (layer("Softmax", "softmax_param { axis: -2 }", bottoms=1), [(2, 4, 3)]),
    "SoftmaxWithLoss": (layer("SoftmaxWithLoss", "loss_param { ignore_label: 1 normalization: FULL }",
                              tops=2),
                        [(3, 4, 2), (3, 2)], {"make_bottom": labels(4), **LABEL_ONLY}),
    "InfogainLoss": (layer("InfogainLoss", "loss_param { ignore_label: 2 }", bottoms=3, tops=2),
                     [(3, 4, 2), (3, 2), (4, 4)], {"make_bottom": infogain_bottoms, **LABEL_ONLY}),
    "EuclideanLoss": (layer("EuclideanLoss"), [(3, 4), (3, 4, 1)]),
    "HingeLoss": (layer("HingeLoss", "hinge_loss_param { norm: L2 }"), [(3, 4), (3,)],
                  {"make_bottom": labels(4), **LABEL_ONLY}),
    "SigmoidCrossEntropyLoss": (layer("SigmoidCrossEntropyLoss", "loss_param { ignore_label: -1 }"),
                                [(3, 4), (3, 4)], {"make_bottom": sigmoid_targets, **LABEL_ONLY}),
    "MultinomialLogisticLoss": (layer("MultinomialLogisticLoss"), [(3, 4), (3,)],
                                {"make_bottom": labels(4, probabilities), **LABEL_ONLY}),
    "ContrastiveLoss": (layer("ContrastiveLoss", "contrastive_loss_param { margin: 4 }", bottoms=3),
                        [(4, 3, 1, 1), (4, 3, 1, 1), (4, 1, 1, 1)],
                        {"make_bottom": pairs, "grad_inputs": [0, 1]}),
    "Accuracy": (layer("Accuracy", "accuracy_param { top_k: 2 }", tops=2), [(5, 4), (5,)],
                 {"make_bottom": labels(4), "gradcheck": False}),
}
