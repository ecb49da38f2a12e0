"""Winograd's F(4x4, 3x3) as one compiled pass over the image (``winograd_kernel.c``), built
on the machine that runs it.

The torch version (:mod:`protocaffe.deploy.winograd`) does each step over the whole image
as a torch op, and at 224 and 112 pixels its transformed tiles go out to memory and back:
there it lost to oneDNN's direct convolution. The compiled pass transforms a block of tiles,
multiplies and transforms back while the block is in the core's cache. On the AMD EPYC Zen 3
this was measured on (2 threads, batch 1), VGG-16's conv1_2 took 8.8 ms (oneDNN 19, the
torch version 35), conv2_2 7.6 ms (oneDNN 20, torch 16).

The C source is compiled once per machine with the C compiler (``$CC``, else ``cc``) for the
machine's own vector instructions (``-march=native``) and OpenMP (torch's own runtime, which
is already loaded, so both share one pool of threads), and the library kept beside the
deploy settings (:func:`protocaffe.deploy.machine.cache_folder`; where that folder cannot be
written, in a private temporary folder for the process). Where no compiler works the
algorithm is not offered, and the others run as before. Whether a layer uses it is measured
per machine, as for every algorithm (:mod:`protocaffe.deploy.settings`).
"""
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from protocaffe import hardware
from protocaffe.deploy import winograd
from protocaffe.deploy.machine import cache_folder, cpu_name
from protocaffe.log import LOGGER as log

SOURCE = Path(__file__).with_name("winograd_kernel.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
POINTS, PANEL, ROWS = 36, 16, 6
"""As in the C source: F(4x4, 3x3)'s 6x6 tile positions, output channels per panel of the
transformed weights, tiles per row block of the product."""


@functools.cache
def library():
    """The compiled kernel (a ctypes library), or None where it cannot be built here."""
    if not torch.backends.openmp.is_available():
        return None
    compiler = shlex.split(os.environ.get("CC") or "cc")
    key = hashlib.sha1(repr((SOURCE.read_bytes(), compiler, FLAGS, cpu_name(), sorted(hardware.read_cpuinfo()[1]),
                             platform.machine())).encode()).hexdigest()[:16]
    path = cache_folder() / f"winograd_kernel-{key}.so"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writable = os.access(path.parent, os.W_OK)
        except OSError:
            writable = False
        if not writable:  # built for this process alone, in a folder of its own
            path = Path(tempfile.mkdtemp(prefix="protocaffe-")) / path.name
        if not _compile(compiler, path):
            return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        log.debug("compiled Winograd kernel not loaded: %s", e)
        return None
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.winograd4.argtypes = [p, i, i, i, i, p, p, i, p, i, i, i, i, i, i, p, i]
    lib.winograd4.restype = None
    return lib


def _compile(compiler, path):
    """Build the library at ``path`` (written whole, then moved there); whether it worked."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        done = subprocess.run(compiler + FLAGS + [str(SOURCE), "-o", str(tmp)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log.debug("compiled Winograd kernel not built (%s): %s", " ".join(compiler), done.stderr.strip())
            return False
        os.replace(tmp, path)
        return True
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("compiled Winograd kernel not built: %s", e)
        return False
    finally:
        tmp.unlink(missing_ok=True)


def fits(layer):
    """Whether the compiled kernel computes this Convolution (2-d, 3x3, stride 1, no dilation,
    any groups, each group's channels in and out a multiple of 8) and can be built here."""
    return (winograd.three_by_three(layer)
            and (layer.weight.shape[0] // layer.group) % 8 == 0 and layer.weight.shape[1] % 8 == 0
            and library() is not None)


class NativeWinograd:
    """A 3x3 convolution with weight (K, C / groups, 3, 3), ``pad`` (ph, pw) and ``groups``, by the
    compiled kernel.

    ``conv(x[, bias, relu])``: x (N, C, H, W) float32 in any memory layout (read channels-last)
    -> (N, K, H + 2 ph - 2, W + 2 pw - 2), channels-last, plus ``bias`` (K,) and then ReLU
    where given."""

    def __init__(self, weight, pad, groups=1):
        self.groups, self.pad = groups, tuple(pad)
        self.k, self.c = weight.shape[0] // groups, weight.shape[1]  # per group
        kp = -(-self.k // PANEL) * PANEL
        us = [F.pad(winograd.Winograd(w, pad, 4).u, (0, kp - self.k)) for w in weight.chunk(groups)]  # (36, C, Kp)
        self.u = torch.stack([u.view(POINTS, self.c, kp // PANEL, PANEL).permute(0, 2, 1, 3) for u in us]).contiguous()
        self.kp = kp

    def blocks(self, tiles, threads):
        """(tiles per block, splits of each group's output channels) for an image of ``tiles`` tiles.

        Each block reads all of U (the transformed weights) once, so where U is larger than a
        cache holds (over 16 MB: 256 channels in and out and more) the blocks are as large as
        54 tiles and U is read a few times only; else 12 tiles (fewer where the image has
        fewer) keep each block's transformed input and products in the core's own cache.
        Where the blocks do not share out evenly among the threads (a small image), the output
        channels are split too, until no thread has more than 15% over its share. Measured on
        the AMD EPYC Zen 3 (2 threads) over VGG-16's and GoogLeNet's 3x3 layers at batch 1 and
        10: within 10% of the best of 24 choices, often the best."""
        per = min(54 if POINTS * self.c * self.kp * 4 > 16 << 20 else 12, -(-tiles // ROWS) * ROWS)
        count = -(-tiles // per) * self.groups
        splits = 1
        while splits < self.kp // PANEL and -(-count * splits // threads) * threads > 1.15 * count * splits:
            splits += 1
        return per, splits

    def __call__(self, x, bias=None, relu=False):
        n, _, h, w = x.shape
        ph, pw = self.pad
        x = x.float().permute(0, 2, 3, 1).contiguous()  # (N, H, W, C): no copy where channels-last
        out_h, out_w = h + 2 * ph - 2, w + 2 * pw - 2
        out = torch.empty(n, out_h, out_w, self.k * self.groups)
        threads = torch.get_num_threads()
        tiles, splits = self.blocks(n * -(-out_h // 4) * -(-out_w // 4), threads)
        work = torch.empty(threads * POINTS * tiles * (self.c + self.kp))
        if bias is not None:
            bias = bias.contiguous()
        library().winograd4(x.data_ptr(), n, h, w, self.c, self.u.data_ptr(),
                            None if bias is None else bias.data_ptr(), int(relu), out.data_ptr(),
                            self.k, self.groups, ph, pw, tiles, splits, work.data_ptr(), threads)
        return out.permute(0, 3, 1, 2)
