"""The memory a net may take where it runs, checked while its shapes are inferred.

A prototxt from a stranger can ask for blobs no machine holds (``dim: 100000`` four
times): allocating them gets the process killed. So while a net is built, before any of
it is allocated, each parameter (when its layer creates it) and each layer's new tops
(when their shapes are known) are added up in float32 bytes, as Caffe counts its blobs,
and the first that takes the sum past the memory available is a CaffeError naming the
layer and the sizes. The sum counts the values only (no gradients, no workspace): a net
refused here could never run, and one that passes may still run short.

Available memory: on a CUDA device its free memory; on the CPU, Linux's MemAvailable plus
free swap (at most a cgroup's memory limit), elsewhere what ``os.sysconf`` or Windows'
GlobalMemoryStatusEx report; on other devices (``meta``) nothing is checked.
"""
import ctypes
import os
import sys

import torch

BYTES_PER_VALUE = 4  # Caffe's blobs are float32


def human(n):
    """``n`` bytes in binary units, e.g. ``3.7 GiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def _meminfo():
    """Linux: MemAvailable + SwapFree of /proc/meminfo, in bytes; None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            fields = {key: int(value.split()[0]) * 1024 for key, value in
                      (line.split(":", 1) for line in f if ":" in line)}
        return fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError):
        return None


def _cgroup_limit():
    """This process's cgroup memory limit (v2, else v1) in bytes, or None: a net larger than
    it can never run here, whatever the host has free."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line.strip().split(":", 2)[2] for line in f if line.startswith("0::")), "/")
    except OSError:
        path = "/"
    for name in (f"/sys/fs/cgroup{path.rstrip('/')}/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(name) as f:
                text = f.read().strip()
            return None if text == "max" else int(text)
        except (OSError, ValueError):
            continue
    return None


def _windows():
    class Status(ctypes.Structure):
        _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong)] + \
                   [(name, ctypes.c_ulonglong) for name in ("total_phys", "avail_phys", "total_page",
                                                            "avail_page", "total_virtual", "avail_virtual",
                                                            "avail_extended")]
    status = Status(length=ctypes.sizeof(Status))
    return status.avail_page if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)) else None


def host_available():
    """Bytes of memory this process may still take on the host, or None when unknown."""
    if sys.platform == "win32":
        return _windows()
    found = _meminfo()
    if found is None:
        for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):  # macOS has only the total
            try:
                found = os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
                break
            except (ValueError, OSError, AttributeError):
                continue
    limit = _cgroup_limit()
    if found is None or limit is None:
        return found if limit is None else limit
    return min(found, limit)


def available(device):
    """Bytes free on ``device`` for a net's tensors, or None where nothing is checked."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        return host_available()
    return None


class Budget:
    """The memory a net being built has claimed so far, against what ``device`` has free."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.limit = available(self.device)
        self.used = 0

    def claim(self, layer, what, values):
        """Add ``values`` float32 values (``what``: the tops or parameter they are); a CaffeError
        naming ``layer`` (a Layer) once the net's total passes the memory available."""
        size = values * BYTES_PER_VALUE
        self.used += size
        if self.limit is not None and self.used > self.limit:
            raise layer.error(f"{what}: {human(size)}, which brings the net's blobs and parameters "
                              f"to {human(self.used)}: more than the {human(self.limit)} of memory "
                              f"available on {'the CPU' if self.device.type == 'cpu' else self.device}")
