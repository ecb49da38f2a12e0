"""Speed settings, applied in one place around a net and the training step.

    speed = Speed(precision="bf16", compile=True)
    speed.prepare(net)                  # layout, fp32 islands, compilation: once, after net.to(device)
    with speed.autocast(net):           # the forward (autograd runs the backward in the same dtypes)
        loss = net.loss(net())
    speed.backward(loss)                # fp16: the loss is scaled first
    if speed.unscale(params):           # fp16: grads unscaled; False when they overflowed
        ...Caffe's update, in float32...

Precision: ``fp32`` is Caffe's arithmetic and changes nothing (on CUDA it turns cuDNN's
TF32 convolutions off: the golden fixtures are IEEE float32). ``bf16`` and ``fp16``
run under ``torch.autocast``: convolutions and matrix products take the low precision,
weights stay float32 (autocast casts a copy), so gradients, solver history and
updates are float32 and Caffe's update rules run unchanged. Layers whose numerics
need float32 run outside autocast on float32 inputs (:data:`FP32_TYPES` and every
loss layer): softmax, LRN's power, BatchNorm's statistics, MVN. fp16 scales the loss
as ``torch.amp.GradScaler`` does (same kernels and defaults) but leaves the update
to the solver; an overflowing step is skipped, as GradScaler skips it. ``auto`` is settled
per device when the settings are applied (:meth:`Speed.resolve`): bf16 where the device
computes it natively (protocaffe/hardware.py: AMX or AVX512-BF16 CPUs, CUDA from compute
capability 8.0), fp32 elsewhere. A forced bf16 or fp16 that the device would emulate runs,
with a warning (once) that names what is missing and what it costs.

Layout: ``channels_last`` (NHWC) stores 4-d weights, and so the convolutions' outputs,
channels last. By default (``None``) it is on CUDA only (tensor-core convolutions run
NHWC); on this CPU it measured slower than NCHW in fp32 and in bf16 (BENCHMARKS.md).

Compilation: ``compile`` runs the net through ``torch.compile`` (inductor fuses the
elementwise tails: ReLU, LRN, pooling, dropout); ``cuda_graphs`` compiles in
``reduce-overhead`` mode, which replays the step as CUDA graphs (CUDA only).
"""
import contextlib
import ctypes
import ctypes.util
import functools
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from protocaffe import hardware
from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log
from protocaffe.proto import caffe_pb2

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP32_TYPES = {"Softmax", "LRN", "BatchNorm", "MVN", "Accuracy"}
"""Layer types run in float32 under autocast (loss layers too: ``is_loss``)."""
DEFAULT_PRECISION = caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name["precision"].default_value


CHOICES = (*PRECISIONS, "auto")


def check_precision(value):
    if value not in CHOICES:
        raise CaffeError(f"precision must be one of {', '.join(CHOICES)}; found '{value}'")
    return value


@functools.cache
def warn_emulated(precision, device, reason):
    """Warn, once per process for each precision and device, that ``device`` emulates ``precision``."""
    log.warning("precision %s on %s runs emulated: %s. --precision auto runs fp32 here.",
                precision, device, reason)


@dataclass
class Speed:
    precision: str = DEFAULT_PRECISION
    channels_last: bool = None
    compile: bool = False
    cuda_graphs: bool = False
    resolved_for: torch.device = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        check_precision(self.precision)

    def resolve(self, device):
        """Settle ``auto`` for ``device`` (bf16 where native, else fp32) and warn of a forced
        low precision that ``device`` emulates; applying the settings does this first."""
        if self.resolved_for == device:
            return self
        self.resolved_for = device
        if self.precision == "auto":
            self.precision = hardware.auto_precision(hardware.native_precisions(device))
            log.info("Precision auto on %s: %s", device, self.precision)
        elif self.reduced:
            reason = hardware.shortfall(self.precision, device)
            if reason:
                warn_emulated(self.precision, str(device), reason)
        return self

    @property
    def dtype(self):
        """The torch dtype of the precision (once :meth:`resolve` has settled ``auto``)."""
        return PRECISIONS[self.precision]

    @property
    def reduced(self):
        return self.dtype != torch.float32

    def use_channels_last(self, device):
        if self.channels_last is not None:
            return self.channels_last
        return device.type == "cuda"

    def prepare(self, net, *, layers=False):
        """Apply the settings to ``net`` (already on its device); ``layers`` compiles each layer
        on its own (``protocaffe time``'s layer-by-layer runs) instead of the whole net."""
        device = net.ctx.device
        self.resolve(device)
        if device.type == "cpu":
            keep_freed_memory()
        if device.type == "cuda" and not self.reduced:
            torch.backends.cudnn.allow_tf32 = False
        if self.cuda_graphs and device.type != "cuda":
            raise CaffeError("--cuda_graphs needs a CUDA device (--gpu N)")
        if self.use_channels_last(device):
            net.to(memory_format=torch.channels_last)
        if self.reduced:
            for layer in net.layers.values():
                if layer.type in FP32_TYPES or layer.is_loss:
                    keep_fp32(layer)
                if layer.type == "InnerProduct" and device.type == "cpu":
                    layer.fp32_weight_gradient = True
        if self.compile or self.cuda_graphs:
            mode = "reduce-overhead" if self.cuda_graphs else None
            for module in (net.layers.values() if layers else [net]):
                module.compile(mode=mode)
        self.scaler = LossScaler(device) if self.precision == "fp16" else None
        return net

    def autocast(self, device):
        """The forward's autocast context for a net on ``device`` (none in fp32)."""
        if not self.resolve(device).reduced:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def backward(self, loss):
        (loss if self.scaler is None else self.scaler.scaled(loss)).backward()

    def unscale(self, params):
        """fp16: divide the gradients by the loss scale and update the scale; False when they
        overflowed (the step is to be skipped). Otherwise True, without touching the device."""
        if self.scaler is None:
            return True
        return self.scaler.unscale([p.tensor.grad for p in params if p.tensor.grad is not None])


@functools.cache
def keep_freed_memory():
    """On the CPU, have glibc serve every allocation from its heap and keep what is freed
    (M_MMAP_MAX 0, M_TRIM_THRESHOLD max): fc6's 150 MB gradient is then reused each
    iteration instead of mapped afresh and faulted in page by page. Once per process;
    a no-op where the C library is not glibc. Returns whether it applied."""
    try:
        libc = _libc()
        return bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 2 ** 31 - 1))
    except (OSError, AttributeError, TypeError):
        return False


def release_freed_memory():
    """Hand what the C library holds freed back to the system (glibc's malloc_trim; a no-op
    elsewhere): after a large one-off use, such as onnxruntime's session measured and dropped,
    which :func:`keep_freed_memory` would otherwise keep for the process (VGG-16: 2.5 GB)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


@functools.cache
def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c"))


SMALL_BATCH = 32
"""Rows up to which an InnerProduct's weight gradient is computed in float32 on the CPU."""


def low_precision_linear_pays(x):
    """Under autocast with at most :data:`SMALL_BATCH` rows: there the weight gradient is a
    thin product (K = rows) whose cost is writing it. Written once in float32 it beats a
    low-precision product plus autocast's cast of the result back to the float32 weight's
    dtype. fc6 at batch 10 on this CPU (BENCHMARKS.md): 5.7 ms against 5.5 + 10.1 ms."""
    return torch.is_autocast_enabled(x.device.type) and x.shape[:-1].numel() <= SMALL_BATCH


class LowPrecisionLinear(torch.autograd.Function):
    """``x @ w.T + b`` in the autocast dtype, as autocast computes it; in the backward the
    input's gradient in that dtype too, but the weight's and bias's in float32, from the
    low-precision operands (so no rounding of the gradient to bf16 either)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        with torch.autocast(x.device.type, enabled=False):
            low_x, low_w = x.to(dtype), weight.to(dtype)
            out = F.linear(low_x, low_w, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(low_x, low_w)
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        low_x, low_w = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (grad.to(low_w.dtype) @ low_w).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            dw = rows.float().t() @ low_x.reshape(-1, low_x.shape[-1]).float()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = rows.float().sum(0)
        return dx, dw, db, None


def keep_fp32(layer):
    """Run ``layer`` outside autocast on float32 inputs (its outputs are float32)."""
    if getattr(layer.forward, "keeps_fp32", False):
        return
    inner = layer.forward

    @functools.wraps(inner)
    def forward(*bottoms):
        with torch.autocast(layer.ctx.device.type, enabled=False):
            return inner(*(b.float() if b.is_floating_point() else b for b in bottoms))
    forward.keeps_fp32 = True
    layer.forward = forward


class LossScaler:
    """fp16 loss scaling with torch.amp.GradScaler's defaults and kernels: the scale starts at
    2^16, halves at every overflow and doubles after 2000 steps without one."""

    def __init__(self, device, init=2.0 ** 16, growth=2.0, backoff=0.5, interval=2000):
        self.scale = torch.full((), init, dtype=torch.float32, device=device)
        self.tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.growth, self.backoff, self.interval = growth, backoff, interval

    def scaled(self, loss):
        return loss * self.scale

    def unscale(self, grads):
        found = torch.zeros((), dtype=torch.float32, device=self.scale.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self.scale.reciprocal())
        torch._amp_update_scale_(self.scale, self.tracker, found, self.growth, self.backoff, self.interval)
        return not bool(found)  # one read-back per step, as GradScaler.step makes


def matmul_ceiling(device, dtype, size=2048, seconds=0.5):
    """The best GFLOP/s of square matrix products in ``dtype`` on ``device``, measured now for
    about ``seconds`` (the ceiling that achieved rates are compared with). The products grow
    from 256 square to ``size``, doubling while the next one would still take under
    ``seconds``: where the dtype is emulated (bf16 on an AVX2 CPU) one 2048-square product
    takes 90 s, and the ceiling is then measured on smaller ones."""
    n = 256
    while n < size and _best_product(device, dtype, n, 0.0) * 8 <= seconds:
        n *= 2
    return 2 * n ** 3 / _best_product(device, dtype, n, seconds) / 1e9


def _best_product(device, dtype, size, seconds):
    """The fastest of ``size``-square products timed for about ``seconds`` (at least one)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        lap = time.perf_counter() - start
        best, spent = min(best, lap), spent + lap
    return best


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
