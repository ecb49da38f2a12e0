"""What a deployed net's measurements depend on besides the net (the machine), and where
what is measured or built for this machine is kept: ``$PROTOCAFFE_CACHE``, default
``~/.cache/protocaffe`` (the settings, :mod:`protocaffe.deploy.settings`; the compiled
kernel, :mod:`protocaffe.deploy.native`)."""
import os
import platform
from pathlib import Path

import torch


def cache_folder():
    return Path(os.environ.get("PROTOCAFFE_CACHE") or Path.home() / ".cache" / "protocaffe")


def cpu_name():
    """The CPU's model name and the vector ISA torch dispatches to (e.g. ``AMD EPYC, AVX2``)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def machine(device):
    """What the measurement depends on besides the net."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_name()}, {torch.get_num_threads()} threads"
    return f"{where}, torch {torch.__version__}"
