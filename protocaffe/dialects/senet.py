"""SENet (hujie-frank/SENet): the Axpy layer (no parameters), which fuses the squeeze-excitation
gate with the residual sum. Layer type: protocaffe.layer_types.mobile."""
from protocaffe.dialects import Dialect, register

SENET = register(Dialect(
    key="senet",
    name="SENet (hujie-frank/SENet)",
    layer_types=frozenset({"Axpy"}),
))
