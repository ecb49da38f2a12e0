"""What a deployed net may fold or fuse, in three tables keyed by Caffe layer type.

- :data:`AFFINES`: layers that, at inference, are a per-channel affine map
  ``y = scale * x + shift`` along axis 1 (BatchNorm on its global statistics, Scale,
  Bias). Each entry returns ``(scale, shift)``, two (C,) float tensors, or None where
  this layer is not such a map (BatchNorm on the batch's statistics, Scale by a second
  bottom, a blob over more than the channel axis).
- :data:`ABSORBERS`: layers whose output channels can take such a map into their own
  weights (Convolution, Deconvolution, InnerProduct along axis 1). Each entry returns the
  folded ``(weight, bias)``, new tensors, or None.
- :data:`ACTIVATIONS`: elementwise layers that run inside the convolution before them:
  oneDNN applies them as post-ops, ``(attr, scalars)`` for
  ``torch.ops.mkldnn._convolution_pointwise``; other algorithms call the layer after.

A fork's or plugin's layer joins by registering in the table it belongs to, e.g. a
BatchNorm with a built-in affine part::

    from protocaffe import deploy

    @deploy.affine("BN")
    def _bn(layer):
        inverse = torch.rsqrt(layer.variance + layer.eps)
        return layer.weight * inverse, layer.bias - layer.mean * layer.weight * inverse

Folding computes in float64 and rounds once to float32, so a folded convolution
differs from the layer-by-layer net by float32 rounding only.
"""
import torch

AFFINES = {}
ABSORBERS = {}
ACTIVATIONS = {}


def _registrar(table):
    def register(type_name):
        def decorate(fn):
            table[type_name] = fn
            return fn
        return decorate
    return register


affine = _registrar(AFFINES)
"""``@affine("Type")``: ``fn(layer) -> (scale, shift) or None``."""
absorber = _registrar(ABSORBERS)
"""``@absorber("Type")``: ``fn(layer, scale, shift) -> (weight, bias) or None``."""
activation = _registrar(ACTIVATIONS)
"""``@activation("Type")``: ``fn(layer) -> (attr, scalars) or None``."""


def channel_affine(layer):
    """``(scale, shift)`` in float64 when ``layer`` is a per-channel affine map, else None."""
    fn = AFFINES.get(layer.type)
    if fn is None or len(layer.param.bottom) != 1 or len(layer.param.top) != 1:
        return None
    found = fn(layer)
    return None if found is None else tuple(t.detach().double() for t in found)


def compose(first, then):
    """The map ``then(first(x))`` of two ``(scale, shift)`` pairs."""
    return first[0] * then[0], first[1] * then[0] + then[1]


# ---- affine maps ----------------------------------------------------------------

@affine("BatchNorm")
def _batch_norm(layer):
    """(x - mean / s) / sqrt(variance / s + eps), s the scale factor (statistics taken as 0 where s = 0)."""
    if not layer.use_global:
        return None
    s = layer.scale_factor.double()[0]
    factor = torch.where(s == 0, torch.zeros_like(s), 1 / s)
    inverse = torch.rsqrt(layer.variance.double() * factor + layer.eps)
    return inverse, -layer.mean.double() * factor * inverse


@affine("Scale")
def _scale(layer):
    if layer.axis != 1 or layer.weight.dim() != 1:
        return None
    shift = layer.bias if "bias" in layer.blob_names else torch.zeros_like(layer.weight)
    return layer.weight, shift


@affine("Bias")
def _bias(layer):
    if layer.axis != 1 or layer.bias.dim() != 1:
        return None
    return torch.ones_like(layer.bias), layer.bias


# ---- layers that take a map into their weights ------------------------------------

def _folded_bias(bias, scale, shift):
    return shift if bias is None else bias.double() * scale + shift


def _float(weight, bias):
    return weight.float().contiguous(), bias.float().contiguous()


@absorber("Convolution")
def _convolution(layer, scale, shift):
    """Output channel o of weight (O, C / group, k...) scales by scale[o]."""
    if layer.axis != 1:
        return None
    w = layer.weight.detach().double()
    return _float(w * scale.view((-1,) + (1,) * (w.dim() - 1)), _folded_bias(layer.bias, scale, shift))


@absorber("Deconvolution")
def _deconvolution(layer, scale, shift):
    """Weight (C, O / group, k...): output channel g * O / group + j is column j of group g's rows."""
    if layer.axis != 1:
        return None
    w = layer.weight.detach().double()
    c, per_group = w.shape[:2]
    grouped = w.reshape((layer.group, c // layer.group, per_group) + tuple(w.shape[2:]))
    factor = scale.view((layer.group, 1, per_group) + (1,) * (w.dim() - 2))
    return _float((grouped * factor).reshape(w.shape), _folded_bias(layer.bias, scale, shift))


@absorber("InnerProduct")
def _inner_product(layer, scale, shift):
    """Weight (num_output, K), or (K, num_output) with ``transpose``; only along axis 1."""
    if layer.axis != 1:
        return None
    w = layer.weight.detach().double()
    w = w * scale[None, :] if layer.transpose else w * scale[:, None]
    return _float(w, _folded_bias(layer.bias, scale, shift))


# ---- activations oneDNN runs as post-ops -----------------------------------------------

@activation("ReLU")
def _relu(layer):
    slope = layer.param.relu_param.negative_slope
    return ("leaky_relu", [slope]) if slope else ("relu", [])


@activation("TanH")
def _tanh(layer):
    return "tanh", []


@activation("Sigmoid")
def _sigmoid(layer):
    return "sigmoid", []
