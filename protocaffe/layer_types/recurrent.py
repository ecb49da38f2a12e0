"""Caffe's recurrent layers: LSTM, RNN and the single LSTM step LSTMUnit.

Caffe builds LSTM and RNN as an unrolled net of InnerProduct, Scale, Eltwise and
LSTMUnit layers; here the same arithmetic runs as one loop over time, vectorized
over the batch. Shapes are time-major as in Caffe:

- ``x`` (T, N, ...), at least 3 axes: everything after axis 1 is flattened (InnerProduct axis 2);
- ``cont`` (T, N): 0 where a sequence starts, so the previous state is multiplied by
  ``cont[t]`` before it is used. No gradient reaches ``cont``;
- ``x_static`` (N, ...), optional: fed to every step (InnerProduct axis 1);
- with ``expose_hidden``, the initial states (1, N, num_output) are extra bottoms
  (h0, then c0 for LSTM) and the final states extra tops (hT, then cT). As in Caffe,
  which shares only their data with the unrolled net, no gradient flows into the
  initial states or back from the final ones: backpropagation is truncated at the
  edges of the batch.

Without ``expose_hidden``, the state a forward pass ends with is where the next one
starts (zeros at first), as in Caffe, where ``cont == 0`` at t = 0 resets it.
"""
import torch
import torch.nn.functional as F

from protocaffe.layer_types.base import Layer, count, register


def lstm_unit(c_prev, gates, cont):
    """One LSTM step: (c_prev (N, H), gates (N, 4H) in Caffe's order i, f, o, g, cont (N,)) -> (c, h).

    c = cont * sigmoid(f) * c_prev + sigmoid(i) * tanh(g); h = sigmoid(o) * tanh(c).
    The forget gate is exactly 0 where cont is 0, as in Caffe's LSTMUnit. For cont other
    than 0 or 1 the gradient here is the true one, cont * s * (1 - s) with s = sigmoid(f),
    where Caffe's backward uses f' * (1 - f') with f' = cont * s.
    """
    i, f, o, g = gates.chunk(4, dim=-1)
    cont = cont.detach().unsqueeze(-1)
    f = torch.where(cont == 0, torch.zeros_like(f), cont * torch.sigmoid(f))
    c = f * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return c, torch.sigmoid(o) * torch.tanh(c)


class _DropGrad(torch.autograd.Function):
    """The identity, whose backward discards the gradient: an exposed final state takes a diff
    (so ``backward`` from it is allowed) but, as in Caffe, sends nothing back."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


class _Recurrent(Layer):
    """What LSTM and RNN share: bottom/top bookkeeping, the input and static transforms, the carried state.

    A subclass sets ``num_states`` and writes ``add_blobs(input_dim, static_dim)`` and
    ``run(xw, cont, states) -> (outputs (T, N, H), final states)``.
    """
    replays_caffe_draws = False  # Caffe fills its unrolled net's blobs in that net's own order
    num_bottoms = (2, 5)
    num_tops = (1, 3)
    num_states = 1

    def setup(self, bottom_shapes):
        p = self.param.recurrent_param
        if p.num_output <= 0:
            raise self.error("recurrent_param.num_output must be positive")
        self.hidden = p.num_output
        self.expose = p.expose_hidden
        exposed = self.num_states if self.expose else 0
        self.static = len(bottom_shapes) > 2 + exposed
        want_bottoms, want_tops = 2 + self.static + exposed, 1 + exposed
        if len(bottom_shapes) != want_bottoms or len(self.param.top) != want_tops:
            raise self.error(f"expects {want_tops} top(s) and 2 bottoms (x, cont), an optional x_static"
                             f"{' and the initial states' if self.expose else ''}; found "
                             f"{len(bottom_shapes)} bottom(s), {len(self.param.top)} top(s)")
        self._check_shapes(bottom_shapes)
        static_dim = count(bottom_shapes[2], 1) if self.static else 0
        self.add_blobs(count(bottom_shapes[0], 2), static_dim)
        self.carried = None

    def _check_shapes(self, shapes):
        x, cont = shapes[0], shapes[1]
        if len(x) < 3:
            raise self.error(f"bottom 0 must be (T, N, ...) with at least 3 axes, found shape {x}")
        if tuple(cont) != tuple(x[:2]):
            raise self.error(f"bottom 1 (cont) must have shape {tuple(x[:2])}, found {cont}")
        if self.static and (len(shapes[2]) < 1 or shapes[2][0] != x[1]):
            raise self.error(f"bottom 2 (x_static) must be ({x[1]}, ...), found {shapes[2]}")
        state = (1, x[1], self.hidden)
        for i, s in enumerate(shapes[2 + self.static:], 2 + self.static):
            if tuple(s) != state:
                raise self.error(f"bottom {i} (an initial state) must have shape {state}, found {s}")

    def top_shapes(self, bottom_shapes):
        t, n = bottom_shapes[0][:2]
        return [(t, n, self.hidden)] + [(1, n, self.hidden)] * (len(self.param.top) - 1)

    def forward(self, x, cont, *rest):
        static, states = (rest[0], rest[1:]) if self.static else (None, rest)
        xw = F.linear(x.flatten(2), self.weight_ih, self.bias)
        if static is not None:
            xw = xw + F.linear(static.flatten(1), self.weight_static)
        if not self.expose:
            states = self._initial_states(x)
        out, final = self.run(xw, cont, [s[0].detach() for s in states])
        if not self.expose:
            self.carried = [s.detach() for s in final]
            return out
        return (out, *(_DropGrad.apply(s).unsqueeze(0) for s in final))

    def _initial_states(self, x):
        """The state the last forward pass ended with, or zeros (also when the batch size changed)."""
        n = x.shape[1]
        if self.carried is None or self.carried[0].shape[0] != n:
            return [x.new_zeros(1, n, self.hidden)] * self.num_states
        return [s.unsqueeze(0).to(x) for s in self.carried]


@register
class LSTM(_Recurrent):
    """Long short-term memory over (T, N, ...) -> h (T, N, num_output), Caffe's LSTM.

    Blobs in Caffe's order: W_xc (4H, D), b_c (4H,), [W_xc_static (4H, D_static)],
    W_hc (4H, H), gates stacked i, f, o, g (PyTorch's nn.LSTM stacks i, f, g, o and
    has a second bias). Per step: gates = W_xc x_t + b_c + W_xc_static x_static +
    W_hc (cont_t h_{t-1}), then :func:`lstm_unit`.
    """
    type = "LSTM"
    num_states = 2

    def add_blobs(self, input_dim, static_dim):
        p, h4 = self.param.recurrent_param, 4 * self.hidden
        self.add_blob("weight_ih", (h4, input_dim), p.weight_filler)
        self.add_blob("bias", (h4,), p.bias_filler)
        if static_dim:
            self.add_blob("weight_static", (h4, static_dim), p.weight_filler)
        self.add_blob("weight_hh", (h4, self.hidden), p.weight_filler)

    def run(self, xw, cont, states):
        h, c = states
        cont = cont.detach().to(xw.dtype)
        hs = []
        for t in range(xw.shape[0]):
            gates = xw[t] + F.linear(cont[t, :, None] * h, self.weight_hh)
            c, h = lstm_unit(c, gates, cont[t])
            hs.append(h)
        return torch.stack(hs), (h, c)


@register
class RNN(_Recurrent):
    """Elman RNN over (T, N, ...) -> o (T, N, num_output), Caffe's RNN.

    h_t = tanh(W_xh x_t + b_h + W_xh_static x_static + W_hh (cont_t h_{t-1})),
    o_t = tanh(W_ho h_t + b_o). Blobs in Caffe's order: W_xh (H, D), b_h (H,),
    [W_xh_static (H, D_static)], W_hh (H, H), W_ho (H, H), b_o (H,). Unlike
    PyTorch's nn.RNN, the output is a second tanh layer over h, not h itself.
    """
    type = "RNN"

    def add_blobs(self, input_dim, static_dim):
        p, h = self.param.recurrent_param, self.hidden
        self.add_blob("weight_ih", (h, input_dim), p.weight_filler)
        self.add_blob("bias", (h,), p.bias_filler)
        if static_dim:
            self.add_blob("weight_static", (h, static_dim), p.weight_filler)
        self.add_blob("weight_hh", (h, h), p.weight_filler)
        self.add_blob("weight_ho", (h, h), p.weight_filler)
        self.add_blob("bias_o", (h,), p.bias_filler)

    def run(self, xw, cont, states):
        (h,) = states
        cont = cont.detach().to(xw.dtype)
        hs = []
        for t in range(xw.shape[0]):
            h = torch.tanh(xw[t] + F.linear(cont[t, :, None] * h, self.weight_hh))
            hs.append(h)
        hs = torch.stack(hs)
        return torch.tanh(F.linear(hs, self.weight_ho, self.bias_o)), (h,)


@register
class LSTMUnit(Layer):
    """One LSTM step, Caffe's LSTMUnit: c_prev (1, N, H), gates (1, N, 4H), cont (1, N) -> c, h (1, N, H).

    Gates in Caffe's order i, f, o, g; see :func:`lstm_unit`. No gradient reaches cont.
    """
    type = "LSTMUnit"
    num_bottoms = 3
    num_tops = 2

    def setup(self, bottom_shapes):
        c_prev, gates, cont = bottom_shapes
        n, h = (c_prev[1], c_prev[2]) if len(c_prev) == 3 else (None, None)
        if (len(c_prev) != 3 or c_prev[0] != 1 or tuple(gates) != (1, n, 4 * h)
                or tuple(cont) != (1, n)):
            raise self.error(f"bottoms must be c_prev (1, N, H), gates (1, N, 4H) and cont (1, N); "
                             f"found {c_prev}, {gates}, {cont}")

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0], bottom_shapes[0]]

    def forward(self, c_prev, gates, cont):
        c, h = lstm_unit(c_prev[0], gates[0], cont[0].to(gates.dtype))
        return c.unsqueeze(0), h.unsqueeze(0)
