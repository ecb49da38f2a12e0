"""Every registered layer type is exercised: built from a sample, shapes inferred, run, differentiated.

Samples live in ``tests/samples/*.py`` as ``SAMPLES = {type: (layer prototxt, bottom shapes[, opts])}``;
bottoms named b0, b1, ... and tops t0, t1, ... A type registered without a sample fails here.
opts: ``phase``, ``make_bottom(i, shape, generator)``, ``gradcheck`` (False where Caffe has no
backward), ``grad_inputs`` (the bottoms that get gradients; labels do not), ``prepare(layer)``
(called before the forward pass), ``dtype``.
"""
import importlib
import pkgutil

import pytest
import torch

import samples
from protocaffe import schema
from protocaffe.layer_types import LAYERS, BuildContext
from protocaffe.proto import caffe_pb2

SAMPLES, DUPLICATES = {}, []
for info in pkgutil.iter_modules(samples.__path__):
    family = importlib.import_module(f"samples.{info.name}").SAMPLES
    DUPLICATES += sorted(set(SAMPLES) & set(family))
    SAMPLES.update(family)


def test_no_type_is_sampled_twice():
    assert not DUPLICATES, f"layer types sampled in two files of tests/samples: {DUPLICATES}"


def test_every_registered_type_has_a_sample():
    missing = sorted(set(LAYERS) - set(SAMPLES))
    assert not missing, f"registered layer types without a sample in tests/samples: {missing}"


@pytest.mark.parametrize("type_", sorted(SAMPLES))
def test_sample_builds_runs_and_infers_shapes(type_):
    text, bottom_shapes, *rest = SAMPLES[type_]
    opts = rest[0] if rest else {}
    lp = schema.parse_text(text, caffe_pb2.LayerParameter)  # forks' fields by bare name
    assert lp.type == type_
    ctx = BuildContext(phase=opts.get("phase", caffe_pb2.TEST), generator=torch.Generator().manual_seed(0))
    layer = LAYERS[type_](lp, bottom_shapes, ctx)
    layer = layer.to(opts.get("dtype", torch.float64))
    gen = torch.Generator().manual_seed(1)
    bottoms = [opts.get("make_bottom", lambda i, s, g: torch.randn(s, generator=g, dtype=torch.float64))(i, s, gen)
               for i, s in enumerate(bottom_shapes)]
    opts.get("prepare", lambda layer: None)(layer)
    out = layer(*bottoms)
    out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    assert len(out) == len(lp.top)
    for t, shape in zip(out, layer.top_shapes(bottom_shapes)):
        # a top whose size follows the data (DetectionOutput) keeps its number of axes
        assert t.dim() == len(shape) if layer.shape_from_data else tuple(t.shape) == tuple(shape)
    if opts.get("gradcheck", True):
        wrt = opts.get("grad_inputs", range(len(bottoms)))

        def fn(*args):
            full = list(bottoms)
            for i, a in zip(wrt, args):
                full[i] = a
            res = layer(*full)
            return res if isinstance(res, torch.Tensor) else tuple(r for r in res if r.is_floating_point())
        inputs = tuple(bottoms[i].detach().clone().requires_grad_(True) for i in wrt)
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-4)
