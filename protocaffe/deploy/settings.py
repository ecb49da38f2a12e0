"""How a deployed net runs on this machine: measured once per machine and net, then cached.

:class:`Settings` hold the activations' layout (channels-last or not) and, per
convolution and InnerProduct, its algorithm (:mod:`protocaffe.deploy.ops`). In each layout,
every such layer with a choice is timed alone on its own input with each algorithm it can use,
and another than its default kept where it is clearly faster; then the whole net is timed
in each layout with its algorithms, in turns, and the faster wins (an algorithm such as
NNPACK that reads NCHW can make NCHW the faster layout where oneDNN alone preferred NHWC).
Where onnxruntime is installed and can run the net, the chosen plan is then timed against
it (:mod:`protocaffe.deploy.onnxrt`), in turns, and the faster kept. The choice is kept in
``$PROTOCAFFE_CACHE/deploy.json`` (default ``~/.cache/protocaffe``), keyed by the machine
(CPU model and ISA, threads, torch version, device) and the net (its layers' parameters, the
input shapes, the blobs kept, the engines offered), so a later process starts with it at once.
"""
import hashlib
import json
import os
import time
from dataclasses import dataclass, replace

import torch

from protocaffe.deploy import onnxrt
from protocaffe.deploy.machine import cache_folder, machine
from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log

ROUNDS = 3
"""Timed runs per candidate (after one warm-up run); the fastest counts."""
ENGINE_ROUNDS = 7
ENGINE_LEAST_ROUNDS = 3
"""Timed runs each when the torch plan and onnxruntime are compared (no margin there):
ENGINE_ROUNDS, and ENGINE_LEAST_ROUNDS where the runs are long (LONG_RUN_MS; one run each
decided VGG-16's engine by the noise of a busy machine)."""
GAP = 0.05
"""Seconds idle before each run when torch and onnxruntime are timed in turns: onnxruntime's
threads spin after a call, and torch's run would be timed against them."""
MORE_ROUNDS = 12
LAYER_BUDGET_MS = 30.0
"""A layer's algorithms are timed ROUNDS times each, and again up to MORE_ROUNDS times
while the layer's measuring has taken less than LAYER_BUDGET_MS: more rounds for the small
layers, where a single run is most disturbed, at little cost."""
LONG_RUN_MS = 150.0
LONG_LAYER_MS = 20.0
"""Where every candidate's warm-up run took longer than this (a whole net, a layer alone), one
timed run each decides: the noise of a long run is small against the differences, and
VGG-16 at batch 10 took 84 s to measure with ROUNDS runs each, ResNet-50 32 s."""
HOPELESS = 2.0
"""An algorithm whose warm-up run took over this many times the fastest warm-up is not timed
further (the default always is): at batch 10 VGG-16's conv1_2 by the torch-op Winograd took
0.73 s a run against the compiled one's 0.14."""
MARGIN = 0.95
"""A layer leaves its default algorithm for one measured at most this fraction of its time
(0.9 before: it kept VGG-16's fc6 and conv2_1 at their defaults, 10-12% slower, in one run
of two)."""


@dataclass(frozen=True)
class Settings:
    """How a deployed net runs: 4-d activations channels-last or not, (layer name, algorithm)
    pairs for the convolutions and InnerProducts not computed by their default algorithm, and the engine: the
    plan in torch, or onnxruntime (:mod:`protocaffe.deploy.onnxrt`) on the net's ONNX form."""
    channels_last: bool = False
    algorithms: tuple = ()
    engine: str = "torch"

    def algorithm(self, name):
        return dict(self.algorithms).get(name)


def cache_file():
    return cache_folder() / "deploy.json"


ENGINES = ("torch", "onnxruntime")


def engines():
    """The engines a deployed net may be measured on: ``$PROTOCAFFE_ENGINES`` (comma-separated,
    e.g. ``torch`` to keep onnxruntime out), else all."""
    named = [e.strip() for e in os.environ.get("PROTOCAFFE_ENGINES", "").split(",") if e.strip()]
    unknown = set(named) - set(ENGINES)
    if unknown:
        raise CaffeError(f"PROTOCAFFE_ENGINES: expected some of {', '.join(ENGINES)}, "
                         f"found {', '.join(sorted(unknown))}")
    return tuple(named) or ENGINES


CHOICES = 3
"""The version of what is measured: raised when an algorithm or engine joins, so cached
settings measured without it are measured again (2: InnerProducts in row blocks; 3: the
compiled Winograd)."""


def _net_key(deployed, blobs):
    text = "".join(str(layer.param) for layer in deployed.net.layer_by_name().values())
    shapes = sorted((n, tuple(t.shape), str(t.dtype)) for n, t in blobs.items())
    return hashlib.sha1(f"{text}{shapes}{sorted(deployed.keep)}{engines()}{CHOICES}".encode()).hexdigest()


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


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1000


def measure(deployed, blobs, candidates, rounds=ROUNDS, gap=0.0, least=1):
    """{settings: best ms of the whole net}, the candidates taking turns, each run after ``gap``
    seconds of idling (for the threads an engine leaves spinning); ``rounds`` timed runs each,
    ``least`` where the runs are long."""
    first = _round(deployed, blobs, candidates, gap)  # warm-up
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(max(least, _rounds(rounds, first, LONG_RUN_MS))):
        for s, ms in _round(deployed, blobs, candidates, gap).items():
            best[s] = min(best[s], ms)
    return best


def _round(deployed, blobs, candidates, gap):
    """{settings: ms}: the whole net run once with each candidate, in turn."""
    out = {}
    for s in candidates:
        deployed.refresh(s)
        time.sleep(gap)
        out[s] = _timed(deployed.body, dict(blobs), s)
    return out


def _rounds(rounds, first, long_ms):
    """``rounds``, or one where the warm-up runs (``first``) all took over ``long_ms``."""
    return 1 if min(first.values()) > long_ms else rounds


@torch.no_grad()
def fastest_algorithms(deployed, blobs, channels_last, rounds=ROUNDS):
    """(layer name, algorithm) for each convolution or InnerProduct where another algorithm than its default
    is faster by the MARGIN, each timed alone on its own input, the algorithms in turns."""
    base = Settings(channels_last)
    inputs = {}
    deployed.body(dict(blobs), base, record=inputs)
    chosen = []
    for module, bottoms in inputs.items():
        options = module.algorithms()
        if len(options) < 2:
            continue
        def run(algorithm):
            module.pack(Settings(channels_last, ((module.name, algorithm),)), keep_others=True)
            return _timed(module, *bottoms)

        first = {a: run(a) for a in options}  # warm-up: oneDNN reorders its weights, caches warm
        contenders = [a for a in options if a == options[0] or first[a] <= HOPELESS * min(first.values())]
        best, spent, r = dict.fromkeys(contenders, float("inf")), sum(first.values()), 0
        while r < _rounds(rounds, first, LONG_LAYER_MS) or (r < MORE_ROUNDS and spent < LAYER_BUDGET_MS):
            for algorithm in contenders:
                ms = run(algorithm)
                best[algorithm], spent = min(best[algorithm], ms), spent + ms
            r += 1
        fastest = min(best, key=best.get)
        if best[fastest] < MARGIN * best[options[0]]:
            chosen.append((module.name, fastest))
    deployed.refresh(base, force=True)  # each op packed as measured last: back to the defaults
    return tuple(chosen)


def choose(deployed, blobs):
    """The settings for ``deployed`` on this machine: cached, or measured now and cached."""
    device = next(iter(blobs.values())).device if blobs else torch.device("cpu")
    path, where = cache_file(), machine(device)
    key = f"{where} | {_net_key(deployed, blobs)}"
    table = _read(path)
    if key in table:
        found = table[key]["settings"]
        return Settings(found["channels_last"], tuple(map(tuple, found["algorithms"])), found.get("engine", "torch"))
    start = time.perf_counter()
    candidates = [Settings(layout, fastest_algorithms(deployed, blobs, layout)) for layout in (False, True)]
    times = measure(deployed, blobs, candidates)
    chosen = min(times, key=times.get)
    ms = {("NHWC" if s.channels_last else "NCHW"): t for s, t in times.items()}
    chosen, ms["onnxruntime"] = _against_onnxruntime(deployed, blobs, chosen)
    counts = {a: sum(1 for _, b in chosen.algorithms if b == a) for a in dict(chosen.algorithms).values()}
    log.info("Deployed net %s on %s: %s (measured in %.1f s: %s)", deployed.net.param.name or "", where,
             "onnxruntime" if chosen.engine == "onnxruntime" else
             f"{'NHWC' if chosen.channels_last else 'NCHW'} activations, layers by "
             + (", ".join(f"{a} {n}" for a, n in sorted(counts.items())) or "their defaults"),
             time.perf_counter() - start, ", ".join(f"{k} {v:.3g} ms" for k, v in ms.items() if v is not None))
    table = _read(path)
    table[key] = {"settings": {"channels_last": chosen.channels_last, "algorithms": chosen.algorithms,
                               "engine": chosen.engine}, "ms": ms}
    _write(path, table)
    return chosen


def _against_onnxruntime(deployed, blobs, chosen):
    """``chosen`` or the same on onnxruntime, whichever is faster (timed in turns, ENGINE_ROUNDS
    runs each: both are whole nets that keep their weights, so no margin guards a default),
    and onnxruntime's ms (None where it is not installed, not offered, or cannot run the net)."""
    if "onnxruntime" not in engines() or not onnxrt.offered(deployed, blobs):
        return chosen, None
    ort = replace(chosen, engine="onnxruntime")
    try:
        times = measure(deployed, blobs, [chosen, ort], rounds=ENGINE_ROUNDS, gap=GAP, least=ENGINE_LEAST_ROUNDS)
    except (CaffeError, RuntimeError) as e:  # RuntimeError: onnxruntime's failing run
        log.info("Deployed net %s: %s", deployed.net.param.name or "", e)
        deployed.drop_onnxruntime()
        return chosen, None
    if times[ort] < times[chosen]:
        return ort, times[ort]
    deployed.drop_onnxruntime()
    return chosen, times[ort]
