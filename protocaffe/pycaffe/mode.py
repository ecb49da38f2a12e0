"""pycaffe's global settings (CPU or GPU mode, the device, the precision, the random seed), its log and Timer."""
import time

import torch
import torch.distributed

from protocaffe import caffe_random, log as logs

from protocaffe.errors import CaffeError
from protocaffe.speed import check_precision

_MODE = {"device": torch.device("cpu"), "gpu_id": 0, "seeds": None, "stream": None, "precision": None}


def set_mode_cpu():
    """Run nets and solvers made from now on on the CPU."""
    _MODE["device"] = torch.device("cpu")


def set_mode_gpu():
    """Run nets and solvers made from now on on the CUDA device chosen by set_device (default 0)."""
    if not torch.cuda.is_available():
        raise CaffeError("set_mode_gpu: no CUDA device is available")
    _MODE["device"] = torch.device("cuda", _MODE["gpu_id"])


def set_device(device_id):
    """Choose the CUDA device that GPU mode uses."""
    _MODE["gpu_id"] = int(device_id)
    if _MODE["device"].type == "cuda":
        _MODE["device"] = torch.device("cuda", int(device_id))


def current_device():
    return _MODE["device"]


def set_precision(precision):
    """The arithmetic of the nets and solvers made from now on: "fp32" (Caffe's), "bf16", "fp16"
    or "auto" (bf16 where the device computes it natively, else fp32); protocaffe.speed. It
    overrides a solver's ``precision`` field as set_mode_* override its ``solver_mode``.
    Blobs stay float32 arrays to the caller whatever the precision."""
    _MODE["precision"] = check_precision(precision)


def current_precision():
    """The precision set_precision chose, or None (then a Net computes in fp32, a solver in its own)."""
    return _MODE["precision"]


def set_random_seed(seed):
    """Caffe's set_random_seed: Caffe's global random stream restarts from this seed, and the
    nets made from now on draw from it in turn (their fillers take Caffe's values, as in
    Caffe); torch's global generator restarts from it too."""
    torch.manual_seed(int(seed))
    _MODE["seeds"] = torch.Generator().manual_seed(int(seed))
    _MODE["stream"] = caffe_random.Stream(int(seed))


def caffe_stream():
    """The stream set_random_seed started (protocaffe.caffe_random.Stream), or None."""
    return _MODE["stream"]


def next_seed():
    """The seed for the next net's fillers: drawn from set_random_seed's sequence, or None (random)."""
    gen = _MODE["seeds"]
    if gen is None:
        return None
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def has_nccl():
    """Whether ``caffe.NCCL`` works here: it runs on torch.distributed (NCCL on CUDA, gloo on the CPU)."""
    return torch.distributed.is_available()


def init_log(level=0):
    """Caffe's init_log: send the glog-style log to stderr (INFO and up)."""
    logs.setup()


def log(message):
    """Caffe's log: one INFO line in the glog format."""
    logs.LOGGER.info("%s", message)


class Timer:
    """pycaffe's Timer: ``start()``, ``stop()``, ``ms`` (milliseconds between them; since start while running)."""

    def __init__(self):
        self._start = self._stop = None

    def start(self):
        self._start, self._stop = time.perf_counter(), None

    def stop(self):
        self._stop = time.perf_counter()

    @property
    def ms(self):
        if self._start is None:
            return 0.0
        end = self._stop if self._stop is not None else time.perf_counter()
        return (end - self._start) * 1000.0
