"""What a device computes natively: the CPU's instruction sets, the GPUs' tensor cores.

``--precision auto`` (protocaffe/speed.py) and ``protocaffe device_query`` read it. The
decisions are pure functions of a CPU's flag set or a GPU's compute capability, so every
machine type can be tested on any machine; only :func:`cpu` and :func:`native_precisions`
look at the hardware at hand.

Native means the hardware has the instructions, not that PyTorch accepts the dtype:

- bf16 on x86: AVX512-BF16 (dot products, Cooper Lake, Zen 4) or AMX-BF16 (tile products,
  Sapphire Rapids on). Without them oneDNN emulates bf16 on AVX-512 with fp32 arithmetic,
  and below AVX-512 it has no bf16 kernels at all: PyTorch falls back to its reference
  code (on an AVX2 EPYC, CaffeNet 10-20x slower than in fp32; BENCHMARKS.md).
- fp16 on x86: AVX512-FP16 or AMX-FP16, likewise.
- On Arm: the ``bf16`` feature (Armv8.6 BFMMLA/BFDOT) and ``asimdhp`` (fp16 arithmetic).
- CUDA: bf16 tensor cores from compute capability 8.0 (Ampere), fp16 from 7.0 (Volta).

Two of torch's queries look like answers and are not:
``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is true on every AVX-512 CPU (oneDNN can
run bf16 there, emulated) and ``torch.backends.cpu.get_cpu_capability()`` names the vector
width ATen's kernels use (AVX2, AVX512), nothing about bf16 or AMX. The CPU's flags come
from /proc/cpuinfo (the features the kernel enables: AMX needs Linux 5.16), or where there
is none from torch's CPUID queries (``torch.cpu._is_*_supported``).
"""
import functools
import os
import platform
from dataclasses import dataclass

import torch

CPUINFO = "/proc/cpuinfo"

X86_LEVELS = [("AMX", {"amx_bf16"}), ("AVX512-BF16", {"avx512_bf16"}), ("AVX-512", {"avx512f"}),
              ("AVX2", {"avx2"})]
"""x86 instruction-set levels, highest first: (name, flags that make it)."""
ARM_LEVELS = [("SVE", {"sve"}), ("NEON", {"asimd"})]
FEATURES = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX512-BF16": "avx512_bf16", "AVX512-FP16": "avx512_fp16",
            "AMX-BF16": "amx_bf16", "AMX-FP16": "amx_fp16", "NEON": "asimd", "SVE": "sve", "BF16": "bf16",
            "FP16": "asimdhp"}
"""The features device_query lists: {name: /proc/cpuinfo flag}."""
NATIVE = {"x86": {"bf16": ("AVX512-BF16", "AMX-BF16"), "fp16": ("AVX512-FP16", "AMX-FP16")},
          "arm": {"bf16": ("BF16",), "fp16": ("FP16",)}}
"""{architecture: {precision: the features with which a CPU computes it natively}}."""
TORCH_QUERIES = {"_is_avx2_supported": {"avx2"}, "_is_avx512_supported": {"avx512f"},
                 "_is_avx512_bf16_supported": {"avx512_bf16"},
                 "_is_amx_tile_supported": {"amx_tile", "amx_bf16"},  # every AMX CPU has AMX-BF16
                 "_is_amx_fp16_supported": {"amx_fp16"}}
"""Where /proc/cpuinfo is missing: torch.cpu's CPUID queries and the flags each stands for."""
GPU_MIN_CAPABILITY = {"bf16": (8, 0), "fp16": (7, 0)}
"""The compute capability from which a CUDA GPU has tensor cores for each precision."""


@dataclass(frozen=True)
class Cpu:
    """A CPU as :func:`cpu` found it: its name, flags, logical cores and torch's threads."""
    name: str
    flags: frozenset
    logical_cores: int
    threads: int


def parse_cpuinfo(text):
    """(model name, flags) of the first processor in /proc/cpuinfo's ``text``; x86 calls the
    flags ``flags``, Arm ``Features`` (and has no model name: '')."""
    name, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
    return name, flags or frozenset()


def torch_flags():
    """The flags torch's own CPUID queries vouch for (for machines without /proc/cpuinfo)."""
    flags = set()
    for query, names in TORCH_QUERIES.items():
        if getattr(torch.cpu, query, lambda: False)():
            flags |= names
    return frozenset(flags)


@functools.cache
def read_cpuinfo(path=CPUINFO):
    """(name, flags) from /proc/cpuinfo, else platform's name and torch's flags (read once)."""
    try:
        with open(path) as f:
            name, flags = parse_cpuinfo(f.read())
    except OSError:
        name, flags = "", torch_flags()
    return name or platform.processor() or platform.machine(), flags


def cpu():
    """This machine's CPU, with the threads torch uses now."""
    return Cpu(*read_cpuinfo(), os.cpu_count() or 0, torch.get_num_threads())


def isa_level(flags):
    """The highest instruction-set level of interest in ``flags``: AMX, AVX512-BF16, AVX-512,
    AVX2 (x86), SVE, NEON (Arm), or 'below AVX2'."""
    for name, needs in X86_LEVELS + ARM_LEVELS:
        if needs <= flags:
            return name
    return "below AVX2"


def features(flags):
    """The named features device_query lists, those ``flags`` hold, in a fixed order."""
    return [name for name, flag in FEATURES.items() if flag in flags]


def architecture(flags):
    return "arm" if "asimd" in flags else "x86"


def cpu_precisions(flags):
    """{precision: whether a CPU with ``flags`` computes it natively}; fp32 always."""
    native = NATIVE[architecture(flags)]
    return {"fp32": True, **{p: any(FEATURES[f] in flags for f in names) for p, names in native.items()}}


def gpu_precisions(capability):
    """{precision: whether a CUDA GPU of compute ``capability`` (major, minor) has tensor cores for it}."""
    return {"fp32": True, **{p: tuple(capability) >= low for p, low in GPU_MIN_CAPABILITY.items()}}


def native_precisions(device):
    """{precision: native} for a torch ``device``: the CPU's flags, a CUDA device's compute
    capability; None for any other device (meta, mps: nothing known)."""
    if device.type == "cpu":
        return cpu_precisions(cpu().flags)
    if device.type == "cuda":
        return gpu_precisions(torch.cuda.get_device_capability(device))
    return None


def auto_precision(native):
    """What ``--precision auto`` runs given :func:`native_precisions`: bf16 where it is native,
    else fp32 (fp16 never: it needs loss scaling and gains nothing over bf16 where both exist)."""
    return "bf16" if native and native["bf16"] else "fp32"


def shortfall(precision, device):
    """Why ``device`` does not compute ``precision`` natively and what that costs, one sentence;
    None where it does (or nothing is known of the device)."""
    native = native_precisions(device)
    if native is None or native[precision]:
        return None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        low = ".".join(map(str, GPU_MIN_CAPABILITY[precision]))
        return (f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no "
                f"{precision} tensor cores (they start at {low}): little or nothing gained over fp32")
    return cpu_shortfall(precision, cpu())


def cpu_shortfall(precision, info):
    """:func:`shortfall` for a CPU described by ``info`` (a :class:`Cpu`)."""
    arch = architecture(info.flags)
    wanted = " or ".join(NATIVE[arch][precision])
    have = f"{info.name}: {isa_level(info.flags)}"
    if arch == "arm":
        cost = f"PyTorch emulates {precision} with fp32 arithmetic plus conversions, slower than fp32"
    elif "avx512f" in info.flags:
        cost = (f"oneDNN emulates {precision} with AVX-512 fp32 arithmetic plus conversions, "
                "slower than fp32")
    else:
        cost = (f"oneDNN has no {precision} kernels below AVX-512, so convolutions and matrix "
                "products fall back to PyTorch's generic code, 10-20x slower than fp32 "
                "(CaffeNet on an AVX2 AMD EPYC, BENCHMARKS.md)")
    return f"this CPU ({have}) has no {wanted}; {cost}"
