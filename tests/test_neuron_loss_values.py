"""Neuron and loss layers without golden cases (InfogainLoss, ContrastiveLoss, ties in Accuracy, ...)
against naive NumPy versions of Caffe's loops."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from protocaffe.errors import CaffeError
from protocaffe.fileio import array_to_blob, write_binary
from protocaffe.layer_types import LAYERS, BuildContext
from protocaffe.proto import caffe_pb2


def build(text, shapes, phase=caffe_pb2.TEST, seed=0):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return LAYERS[lp.type](lp, shapes, BuildContext(phase=phase, generator=torch.Generator().manual_seed(seed)))


def test_accuracy_ties_count_against_label():
    acc = build('name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "t"', [(3, 3), (3,)])
    x = torch.tensor([[1., 1., 0.], [2., 1., 0.], [0., 5., 5.]])
    lab = torch.tensor([0., 0., 2.])
    # row 0: tie between 0 and 1 -> wrong (Caffe counts >=); row 1 right; row 2 tie -> wrong
    assert float(acc(x, lab)) == pytest.approx(1 / 3)


def test_accuracy_per_class_and_ignore():
    acc = build('name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "t" top: "c" '
                'accuracy_param { ignore_label: 1 }', [(4, 3), (4,)])
    x = torch.tensor([[3., 1., 0.], [0., 1., 3.], [0., 3., 1.], [3., 0., 1.]])
    lab = torch.tensor([0., 0., 1., 2.])
    a, c = acc(x, lab)
    assert float(a) == pytest.approx(1 / 3)
    assert c.tolist() == pytest.approx([0.5, 0.0, 0.0])


def contrastive_ref(a, b, y, margin, legacy):
    """Caffe's ContrastiveLoss Forward_cpu/Backward_cpu with top diff 1."""
    n = a.shape[0]
    diff = a - b
    loss, ga = 0.0, np.zeros_like(a)
    for i in range(n):
        d2 = diff[i] @ diff[i]
        if int(y[i]):
            loss += d2
            ga[i] = diff[i] / n
        elif legacy:
            loss += max(margin - d2, 0)
            ga[i] = -diff[i] / n if margin - d2 > 0 else 0
        else:
            d = np.sqrt(d2)
            loss += max(margin - d, 0) ** 2
            m = margin - d
            ga[i] = -(1 / n) * m / (d + 1e-4) * diff[i] if m > 0 else 0
    return loss / n / 2, ga


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_matches_caffe(legacy):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, 3, generator=g, dtype=torch.float64)
    b[1] = a[1]  # dissimilar pair at distance 0: Caffe's gradient stays finite
    y = torch.tensor([1., 0., 1., 0., 0., 1.])
    layer = build(f'name: "c" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "t" '
                  f'contrastive_loss_param {{ margin: 2 legacy_version: {str(legacy).lower()} }}',
                  [(6, 3), (6, 3), (6,)]).double()
    a.requires_grad_(True); b.requires_grad_(True)
    loss = layer(a, b, y)
    loss.backward()
    ref, ga = contrastive_ref(a.detach().numpy(), b.detach().numpy(), y.numpy(), 2.0, legacy)
    assert float(loss.detach()) == pytest.approx(ref)
    np.testing.assert_allclose(a.grad.numpy(), ga, atol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), -ga, atol=1e-12)


def infogain_ref(x, lab, h, axis, ignore, mode):
    p = np.exp(x - x.max(axis, keepdims=True)); p /= p.sum(axis, keepdims=True)
    pm = np.moveaxis(p, axis, -1).reshape(-1, x.shape[axis])
    lab = lab.reshape(-1).astype(int)
    loss, cnt, g = 0.0, 0, np.zeros_like(pm)
    for i, l in enumerate(lab):
        if ignore is not None and l == ignore:
            continue
        loss -= (h[l] * np.log(np.maximum(pm[i], 1e-20))).sum()
        g[i] = pm[i] * h[l].sum() - h[l]
        cnt += 1
    outer = int(np.prod(x.shape[:axis])); inner = int(np.prod(x.shape[axis + 1:]))
    norm = max(1.0, {"VALID": cnt, "FULL": outer * inner, "BATCH_SIZE": outer, "NONE": 1}[mode])
    shape = list(x.shape); shape.append(shape.pop(axis))
    return loss / norm, np.moveaxis(g.reshape(shape), -1, axis) / norm


@pytest.mark.parametrize("mode", ["VALID", "BATCH_SIZE"])
def test_infogain_from_source_matches_caffe(tmp_path, monkeypatch, mode):
    rng = np.random.default_rng(0)
    h = rng.random((4, 4)).astype(np.float32)
    write_binary(array_to_blob(h.reshape(1, 1, 4, 4)), tmp_path / "H.binaryproto")
    monkeypatch.chdir(tmp_path)
    layer = build(f'name: "i" type: "InfogainLoss" bottom: "x" bottom: "l" top: "t" top: "p" '
                  f'infogain_loss_param {{ source: "H.binaryproto" axis: 1 }} '
                  f'loss_param {{ ignore_label: 3 normalization: {mode} }}', [(2, 4, 3), (2, 3)])
    x = torch.tensor(rng.standard_normal((2, 4, 3)), dtype=torch.float32, requires_grad=True)
    lab = torch.tensor([[0., 3., 1.], [2., 2., 3.]])
    loss, prob = layer(x, lab)
    loss.backward()
    ref, g = infogain_ref(x.detach().numpy().astype(np.float64), lab.numpy(), h.astype(np.float64), 1, 3, mode)
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), g, rtol=1e-4, atol=1e-6)
    assert not prob.requires_grad and prob.shape == x.shape


def test_infogain_errors(tmp_path):
    with pytest.raises(CaffeError, match="source"):
        build('name: "i" type: "InfogainLoss" bottom: "x" bottom: "l" top: "t"', [(2, 4), (2,)])
    with pytest.raises(CaffeError, match="no such file"):
        build(f'name: "i" type: "InfogainLoss" bottom: "x" bottom: "l" top: "t" '
              f'infogain_loss_param {{ source: "{tmp_path}/none" }}', [(2, 4), (2,)])
    with pytest.raises(CaffeError, match="4x4"):
        build('name: "i" type: "InfogainLoss" bottom: "x" bottom: "l" bottom: "h" top: "t"', [(2, 4), (2,), (3, 3)])
    with pytest.raises(CaffeError, match="deprecated"):
        build('name: "i" type: "InfogainLoss" bottom: "x" bottom: "l" bottom: "h" top: "t" '
              'loss_param { normalize: true }', [(2, 4), (2,), (4, 4)])


def test_multinomial_gradient_at_floor():
    layer = build('name: "m" type: "MultinomialLogisticLoss" bottom: "p" bottom: "l" top: "t"', [(2, 3), (2,)])
    p = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]], requires_grad=True)
    loss = layer(p, torch.tensor([0., 2.]))
    loss.backward()
    assert float(loss) == pytest.approx((-np.log(1e-20) - np.log(0.5)) / 2, rel=1e-6)
    assert p.grad[0, 0].item() == pytest.approx(-0.5 / 1e-20, rel=1e-5)
    assert p.grad[1, 2].item() == pytest.approx(-0.5 / 0.5)


def test_sigmoid_ce_ignore_and_default_normalization():
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    t = torch.tensor([[1.0, -1.0], [0.0, 0.3]])
    per = torch.nn.functional.binary_cross_entropy_with_logits(x.detach(), t.clamp(min=0), reduction="none")
    layer = build('name: "s" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "o" '
                  'loss_param { ignore_label: -1 }', [(2, 2), (2, 2)])
    # no normalization given: Caffe divides by the batch size
    assert float(layer(x, t)) == pytest.approx(float(per.sum() - per[0, 1]) / 2)
    layer = build('name: "s" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "o" '
                  'loss_param { ignore_label: -1 normalize: true }', [(2, 2), (2, 2)])
    loss = layer(x, t)
    assert float(loss) == pytest.approx(float(per.sum() - per[0, 1]) / 3)
    loss.backward()
    assert x.grad[0, 1] == 0
    assert x.grad[1, 1].item() == pytest.approx((torch.sigmoid(x[1, 1]).item() - 0.3) / 3)


def test_softmax_loss_legacy_normalize_false_and_detached_prob():
    layer = build('name: "s" type: "SoftmaxWithLoss" bottom: "x" bottom: "l" top: "t" top: "p" '
                  'loss_param { normalize: false ignore_label: 0 }', [(2, 3, 2), (2, 1, 2)])
    x = torch.randn(2, 3, 2, requires_grad=True)
    lab = torch.tensor([[[1., 0.]], [[2., 2.]]])
    loss, prob = layer(x, lab)
    logp = torch.log_softmax(x.detach(), 1)
    assert float(loss) == pytest.approx(-float(logp[0, 1, 0] + logp[1, 2, 0] + logp[1, 2, 1]) / 2, rel=1e-6)
    assert not prob.requires_grad


def test_label_count_errors():
    with pytest.raises(CaffeError, match="one label per prediction"):
        build('name: "s" type: "SoftmaxWithLoss" bottom: "x" bottom: "l" top: "t"', [(2, 3, 2), (2, 3)])
    with pytest.raises(CaffeError, match="first dimension"):
        build('name: "e" type: "EuclideanLoss" bottom: "x" bottom: "l" top: "t"', [(2, 3), (3, 2)])
    with pytest.raises(CaffeError, match="one label per item"):
        build('name: "h" type: "HingeLoss" bottom: "x" bottom: "l" top: "t"', [(2, 3), (2, 2)])
    with pytest.raises(CaffeError, match="one label per prediction"):
        build('name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "t"', [(2, 3), (3,)])


def test_neuron_errors():
    with pytest.raises(CaffeError, match="at least 2 axes"):
        build('name: "p" type: "PReLU" bottom: "x" top: "t"', [(5,)])
    with pytest.raises(CaffeError, match="strictly positive"):
        build('name: "e" type: "Exp" bottom: "x" top: "t" exp_param { base: -2 }', [(5,)])
    with pytest.raises(CaffeError, match="dropout_ratio"):
        build('name: "d" type: "Dropout" bottom: "x" top: "t" dropout_param { dropout_ratio: 1 }', [(5,)])


def test_prelu_default_slope_and_bnll_extremes():
    assert build('name: "p" type: "PReLU" bottom: "x" top: "t"', [(2, 3)]).weight.tolist() == [0.25] * 3
    x = torch.tensor([-200., -30., 0., 30., 200.], requires_grad=True)
    layer = build('name: "b" type: "BNLL" bottom: "x" top: "t"', [(5,)])
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.tolist() == pytest.approx([0, 9.4e-14, 0.5, 1, 1], abs=1e-12)
    assert y.tolist() == pytest.approx([0, 9.4e-14, np.log(2), 30, 200], rel=1e-2)


def test_dropout_train_scales_and_repeats_with_seed():
    x = torch.ones(1000)
    outs = []
    for _ in range(2):
        layer = build('name: "d" type: "Dropout" bottom: "x" top: "t" dropout_param { dropout_ratio: 0.25 }',
                      [(1000,)], phase=caffe_pb2.TRAIN, seed=7)
        outs.append(layer(x))
    assert torch.equal(outs[0], outs[1])
    assert set(outs[0].unique().tolist()) <= {0.0, float(np.float32(4 / 3))}
    assert 0.65 < (outs[0] > 0).float().mean() < 0.85
    test = build('name: "d" type: "Dropout" bottom: "x" top: "t"', [(1000,)])
    assert test(x) is x


def test_exp_log_power_values():
    x = torch.tensor([0.5, 1.0, 2.0])
    e = build('name: "e" type: "Exp" bottom: "x" top: "t" exp_param { base: 2 scale: 3 shift: 1 }', [(3,)])
    assert e(x).tolist() == pytest.approx((2 ** (1 + 3 * x)).tolist())
    lg = build('name: "l" type: "Log" bottom: "x" top: "t" log_param { base: 10 scale: 2 shift: 1 }', [(3,)])
    assert lg(x).tolist() == pytest.approx(np.log10(1 + 2 * x.numpy()).tolist())
    ln = build('name: "l" type: "Log" bottom: "x" top: "t"', [(3,)])
    assert ln(x).tolist() == pytest.approx(np.log(x.numpy()).tolist())
    pw = build('name: "p" type: "Power" bottom: "x" top: "t" power_param { power: 0 scale: 2 }', [(3,)])
    assert pw(x).tolist() == [1.0, 1.0, 1.0]
