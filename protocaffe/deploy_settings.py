"""How a deployed net runs on this machine: measured once per machine and net, then cached.

The candidates (:class:`Settings`: channels-last activations or not, oneDNN-prepacked
convolution weights or not, where the CPU has oneDNN) each run the net
on the caller's inputs, in turns, a few rounds; the fastest round decides. The choice is
kept in ``$PROTOCAFFE_CACHE/deploy.json`` (default ``~/.cache/protocaffe``), keyed by the
machine (CPU model and ISA, threads, torch version, device) and the net (its layers'
parameters and the input shapes), so a later process starts with it at once.
"""
import hashlib
import json
import os
import platform
import time
from pathlib import Path

from dataclasses import dataclass, replace

import torch

from protocaffe import winograd
from protocaffe.log import LOGGER as log

ROUNDS = 3


@dataclass(frozen=True)
class Settings:
    """How a deployed net runs: activations channels-last, convolution weights prepacked,
    and the 3x3 convolutions run by Winograd's F(m x m, 3 x 3): (layer name, m) pairs."""
    channels_last: bool = False
    prepack: bool = False
    winograd: tuple = ()

    def block(self, name):
        """The Winograd block size m for layer ``name``, 0 for a direct convolution."""
        return dict(self.winograd).get(name, 0)


def mkldnn_prepacks(device):
    """Whether convolution weights can be kept in oneDNN's layout on ``device``."""
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


def cache_file():
    root = os.environ.get("PROTOCAFFE_CACHE") or Path.home() / ".cache" / "protocaffe"
    return Path(root) / "deploy.json"


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


def candidates(device):
    prepack = (False, True) if mkldnn_prepacks(device) else (False,)
    return [Settings(channels_last, p) for p in prepack for channels_last in (False, True)]


def _net_key(deployed, blobs):
    text = "".join(str(step_layer.param) for step_layer in deployed.net.layer_by_name().values())
    shapes = sorted((n, tuple(t.shape), str(t.dtype)) for n, t in blobs.items())
    return hashlib.sha1(f"{text}{shapes}{sorted(deployed.keep)}".encode()).hexdigest()


def _read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path, table):
    """Best effort: a cache that cannot be written costs a measurement next time, nothing else."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as e:
        log.debug("deploy settings not cached: %s", e)


def measure(deployed, blobs, settings, rounds=ROUNDS):
    """{settings: best ms} over ``rounds`` turns of every candidate (after one warm-up run each)."""
    best = {s: float("inf") for s in settings}
    for r in range(rounds + 1):
        for s in settings:
            deployed.refresh(s)
            start = time.perf_counter()
            deployed.body(dict(blobs), s)
            if r:
                best[s] = min(best[s], (time.perf_counter() - start) * 1000)
    return best


def winograd_blocks(deployed, blobs, settings, rounds=ROUNDS):
    """The (layer name, m) pairs, among the 3x3 convolutions Winograd's F(m x m, 3 x 3) can run,
    where it is faster on this machine than the direct convolution, each timed on its own input."""
    inputs = {}
    deployed.body(dict(blobs), settings, record=inputs)
    chosen = []
    for module, bottoms in inputs.items():
        if not winograd.fits(module.head):
            continue
        best = {}
        for m in (0,) + tuple(winograd.TRANSFORMS):
            module.pack(replace(settings, winograd=((module.name, m),)))
            best[m] = min(_timed(module, bottoms) for _ in range(rounds + 1))
        if min(best, key=best.get):
            chosen.append((module.name, min(best, key=best.get)))
    return tuple(chosen)


def _timed(module, bottoms):
    start = time.perf_counter()
    with torch.no_grad():
        module(*bottoms)
    return (time.perf_counter() - start) * 1000


def choose(deployed, blobs):
    """The settings for ``deployed`` on this machine: cached, or measured now and cached."""
    device = next(iter(blobs.values())).device if blobs else torch.device("cpu")
    path, where = cache_file(), machine(device)
    key = f"{where} | {_net_key(deployed, blobs)}"
    table = _read(path)
    if key in table:
        found = table[key]["settings"]
        return Settings(found["channels_last"], found["prepack"], tuple(map(tuple, found["winograd"])))
    start = time.perf_counter()
    cands = candidates(device)
    times = measure(deployed, blobs, cands) if len(cands) > 1 else {cands[0]: float("nan")}
    chosen = min(times, key=times.get)
    if device.type == "cpu":
        chosen = replace(chosen, winograd=winograd_blocks(deployed, blobs, chosen))
    log.info("Deployed net %s on %s: channels_last %s, prepacked weights %s, Winograd in %d of its "
             "3x3 convolutions (measured in %.1f s: %s)", deployed.net.param.name or "", where,
             chosen.channels_last, chosen.prepack, len(chosen.winograd), time.perf_counter() - start,
             ", ".join(f"{_label(s)} {ms:.3g} ms" for s, ms in times.items()))
    table = _read(path)
    table[key] = {"settings": {"channels_last": chosen.channels_last, "prepack": chosen.prepack,
                               "winograd": chosen.winograd},
                  "ms": {_label(s): ms for s, ms in times.items()}}
    _write(path, table)
    return chosen


def _label(s):
    return f"{'NHWC' if s.channels_last else 'NCHW'}{' prepacked' if s.prepack else ''}"
