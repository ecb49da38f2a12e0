"""The deployment fast path: a TEST net's forward folded, fused and prepacked for inference.

    from protocaffe.deploy import DeployedNet
    fast = DeployedNet(net, keep=("fc7",))   # a built CaffeNet; its tensors are shared
    blobs = fast(data=x)                     # {name: tensor}: outputs, loss tops and ``keep``

``CaffeNet`` takes this path by itself in eval mode without autograd (``net.deployed()``),
as do pycaffe's ``Net.forward`` on TEST nets and ``protocaffe test``. Outputs equal the
layer-by-layer forward's up to float32 rounding (Winograd's F(4x4, 3x3) and NNPACK, where
measured faster, to about 1e-5 of the output's scale).

- :mod:`~protocaffe.deploy.plan`: the pass that folds per-channel affine layers into the
  convolution or inner product before them and fuses sums and activations; the runner.
- :mod:`~protocaffe.deploy.folding`: the tables, keyed by layer type, of what folds and
  fuses; a fork's or plugin's layer type registers there.
- :mod:`~protocaffe.deploy.ops`: the fused ops and the algorithms a convolution or
  InnerProduct can run by.
- :mod:`~protocaffe.deploy.winograd`: 3x3 convolutions by Winograd's minimal filtering.
- :mod:`~protocaffe.deploy.native`: the same as one compiled pass, built on the machine.
- :mod:`~protocaffe.deploy.blocks`: an InnerProduct's rows in blocks, one per thread.
- :mod:`~protocaffe.deploy.onnxrt`: onnxruntime as a second engine, on the net's ONNX form.
- :mod:`~protocaffe.deploy.settings`: layout, algorithms and engine, measured per machine
  and net on the first call and cached.
- :mod:`~protocaffe.deploy.machine`: what the measurements depend on, and where they are kept.

The folded weights are copies made from the net's tensors; before each call the sources
are checked (same tensor, same autograd version) and what changed is folded again, so
``copy_from``, a solver step or ``share_with`` are seen at the next call.
"""
from protocaffe.deploy.folding import absorber, activation, affine
from protocaffe.deploy.plan import DeployedNet, fuse
from protocaffe.deploy.settings import Settings

__all__ = ["DeployedNet", "Settings", "fuse", "affine", "absorber", "activation"]
