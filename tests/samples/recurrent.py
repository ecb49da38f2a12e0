"""Samples of LSTM, RNN and LSTMUnit (protocaffe/layer_types/recurrent.py) for tests/test_registry.py.

``cont`` is 0 at the first step and 0/1 after, so the state carried over from an earlier
pass never matters; it gets no gradient.
"""
import torch

FILLERS = 'weight_filler { type: "uniform" min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 }'


def layer(type_, body, bottoms, tops=1):
    b = " ".join(f'bottom: "b{i}"' for i in range(bottoms))
    t = " ".join(f'top: "t{i}"' for i in range(tops))
    return f'name: "l" type: "{type_}" {b} {t} {body}'


def with_cont(index, first=0.0):
    """Normal bottoms, except bottom ``index``: sequence indicators, ``first`` at t = 0."""
    def make(i, shape, g):
        if i != index:
            return torch.randn(shape, generator=g, dtype=torch.float64)
        cont = torch.randint(0, 2, shape, generator=g).double()
        cont[0] = first
        return cont
    return make


SAMPLES = {
    "LSTM": (layer("LSTM", f"recurrent_param {{ num_output: 3 {FILLERS} }}", bottoms=3),
             [(4, 2, 2, 2), (4, 2), (2, 3)], {"make_bottom": with_cont(1), "grad_inputs": [0, 2]}),
    "RNN": (layer("RNN", f"recurrent_param {{ num_output: 3 {FILLERS} }}", bottoms=2),
            [(4, 2, 3), (4, 2)], {"make_bottom": with_cont(1), "grad_inputs": [0]}),
    "LSTMUnit": (layer("LSTMUnit", "", bottoms=3, tops=2), [(1, 3, 2), (1, 3, 8), (1, 3)],
                 {"make_bottom": with_cont(2, first=1.0), "grad_inputs": [0, 1]}),
}
