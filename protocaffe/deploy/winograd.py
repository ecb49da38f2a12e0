"""3x3 stride-1 convolutions by Winograd's minimal filtering, F(m x m, 3 x 3), as matrix products.

Each m x m block of outputs comes from an (m + 2) x (m + 2) tile of the padded input
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2015):

    Y = A^T [ (G w G^T) * (B^T d B) ] A           (* elementwise, per input channel, summed)

Here every step is one matrix product over all tiles at once, so MKL does the work:

    V = kron(B^T, B^T) @ tiles        tiles: (a^2, P * C), a = m + 2, P tiles
    M = U @ V  per tile position      U = G w G^T: (a^2, C, K), batched over the a^2 positions
    Y = kron(A^T, A^T) @ M            (m^2, P * K), then the blocks back into the image

F(2, 3) multiplies 2.25 times less than a direct convolution and F(4, 3) 4 times less.
The transforms are computed in float64 from the exact fractions below and rounded once;
F(2, 3)'s outputs are as close to exact as a direct convolution's (float32 rounding),
F(4, 3)'s within about 1e-5 of the output's scale, as its transforms multiply by up to 8
(measured on random data: tests/test_deploy.py). Which of them a layer uses is measured
per machine (protocaffe.deploy.settings); the direct convolution stays where it is faster.
"""
import torch
import torch.nn.functional as F

_F64 = torch.float64

# F(2x2, 3x3): interpolation points 0, 1, -1 and infinity
_F2 = (
    torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=_F64),   # B^T
    torch.tensor([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], dtype=_F64),  # G
    torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=_F64),  # A^T
)
# F(4x4, 3x3): interpolation points 0, 1, -1, 2, -2 and infinity
_F4 = (
    torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=_F64),
    torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=_F64),
    torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=_F64),
)
TRANSFORMS = {2: _F2, 4: _F4}
"""Output block size m -> (B^T, G, A^T)."""


def three_by_three(layer):
    """Whether a layer is a 2-d 3x3 Convolution with stride 1 and no dilation (any groups)."""
    return (layer.type == "Convolution" and layer.axis == 1 and layer.kernel == (3, 3)
            and layer.stride == (1, 1) and layer.dilation == (1, 1))


def fits(layer):
    """Whether a Convolution is one this module computes: 2-d, 3x3, stride 1, no dilation, one group."""
    return three_by_three(layer) and layer.group == 1


class Winograd:
    """A 3x3 convolution with weight (K, C, 3, 3), ``pad`` (ph, pw), output blocks of ``m``.

    ``conv(x[, bias, relu])``: x (N, C, H, W) in any memory layout -> (N, K, H + 2 ph - 2,
    W + 2 pw - 2), channels-last."""

    def __init__(self, weight, pad, m):
        bt, g, at = TRANSFORMS[m]
        self.m, self.a, self.pad = m, m + 2, tuple(pad)
        k, c = weight.shape[:2]
        u = weight.detach().double().reshape(k * c, 9) @ torch.kron(g, g).t()  # G w G^T, flattened
        self.u = u.view(k, c, self.a * self.a).permute(2, 1, 0).float().contiguous()
        self.bt = torch.kron(bt, bt).float()
        self.at = torch.kron(at, at).float()

    def __call__(self, x, bias=None, relu=False):
        """The convolution of ``x``, plus ``bias`` (K,) and then ReLU where given, written
        with the blocks' scatter into the output (no pass of its own)."""
        n, c, h, w = x.shape
        m, a, (ph, pw) = self.m, self.a, self.pad
        out_h, out_w = h + 2 * ph - 2, w + 2 * pw - 2
        th, tw = -(-out_h // m), -(-out_w // m)
        padded = F.pad(x, (pw, m * tw + 2 - w - pw, ph, m * th + 2 - h - ph)).permute(0, 2, 3, 1)
        sn, sh, sw, sc = padded.stride()
        tiles = padded.as_strided((a, a, n, th, tw, c), (sh, sw, sn, m * sh, m * sw, sc)).reshape(a * a, -1)
        v = (self.bt @ tiles).view(a * a, n * th * tw, c)
        k = self.u.shape[2]
        y = (self.at @ torch.bmm(v, self.u).view(a * a, -1)).view(m, m, n, th, tw, k).permute(2, 3, 0, 4, 1, 5)
        out = torch.empty(n, m * th, m * tw, k, dtype=y.dtype)
        blocks = out.view(n, th, m, tw, m, k)
        if bias is None and relu:
            torch.clamp(y, min=0, out=blocks)
        elif bias is None:
            blocks.copy_(y)
        elif relu:
            torch.ops.aten._add_relu(y, bias, out=blocks)
        else:
            torch.add(y, bias, out=blocks)
        return out[:, :out_h, :out_w].permute(0, 3, 1, 2)
