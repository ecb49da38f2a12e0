"""What each machine computes natively (protocaffe/hardware.py) and what device_query says of it.

The CPU types come as /proc/cpuinfo samples (tests/data/cpuinfo; this machine's own among
them), the GPUs as fake device properties: the decisions are pure functions of flags and
compute capabilities. This machine's flags are checked against torch's own CPUID queries."""
import re
import types

import pytest
import torch

from conftest import DATA
from protocaffe import hardware
from protocaffe.cli import main
from protocaffe.commands import device_query

CPUINFO = DATA / "cpuinfo"
MACHINES = {
    # sample: (name, ISA level, native bf16, native fp16, what auto runs)
    "amd_epyc_zen3_kvm": ("AMD EPYC", "AVX2", False, False, "fp32"),
    "amd_epyc_zen4_genoa": ("AMD EPYC 9654 96-Core Processor", "AVX512-BF16", True, False, "bf16"),
    "intel_xeon_sapphire_rapids": ("Intel(R) Xeon(R) Platinum 8480+", "AMX", True, True, "bf16"),
    "intel_xeon_skylake_sp": ("Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz", "AVX-512", False, False, "fp32"),
    "aws_graviton3": ("", "SVE", True, True, "bf16"),
    "aws_graviton2": ("", "NEON", False, True, "fp32"),
}
GPUS = {
    # (name, compute capability): (bf16 tensor cores, fp16 tensor cores, what auto runs)
    ("Tesla P100-PCIE-16GB", (6, 0)): (False, False, "fp32"),
    ("Tesla V100-SXM2-16GB", (7, 0)): (False, True, "fp32"),
    ("Tesla T4", (7, 5)): (False, True, "fp32"),
    ("NVIDIA A100-SXM4-40GB", (8, 0)): (True, True, "bf16"),
    ("NVIDIA GeForce RTX 3090", (8, 6)): (True, True, "bf16"),
    ("NVIDIA H100 80GB HBM3", (9, 0)): (True, True, "bf16"),
}


def sample(name):
    return hardware.parse_cpuinfo((CPUINFO / f"{name}.txt").read_text())


def fake_props(name, capability, memory=16 * 2**30):
    return types.SimpleNamespace(name=name, major=capability[0], minor=capability[1], total_memory=memory,
                                 multi_processor_count=80)


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_cpu_types(machine):
    name, level, bf16, fp16, auto = MACHINES[machine]
    found, flags = sample(machine)
    native = hardware.cpu_precisions(flags)
    assert found == name
    assert hardware.isa_level(flags) == level
    assert native == {"fp32": True, "bf16": bf16, "fp16": fp16}
    assert hardware.auto_precision(native) == auto


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_device_query_lines_per_cpu_type(machine):
    name, level, bf16, fp16, auto = MACHINES[machine]
    found, flags = sample(machine)
    lines = device_query.cpu_lines(hardware.Cpu(found or "aarch64", flags, 64, 32))
    assert lines[0] == f"CPU: {found or 'aarch64'}, 64 logical cores, torch uses 32 threads"
    yes = {True: "yes", False: "no"}
    assert lines[1].endswith(f"(level {level}); native precisions: fp32 yes, bf16 {yes[bf16]}, "
                             f"fp16 {yes[fp16]}; --precision auto runs {auto}")


def test_instruction_sets_listed_in_order():
    assert hardware.features(sample("intel_xeon_sapphire_rapids")[1]) == [
        "AVX2", "AVX-512", "AVX512-BF16", "AVX512-FP16", "AMX-BF16"]
    assert hardware.features(sample("amd_epyc_zen4_genoa")[1]) == ["AVX2", "AVX-512", "AVX512-BF16"]
    assert hardware.features(sample("aws_graviton3")[1]) == ["NEON", "SVE", "BF16", "FP16"]
    assert hardware.isa_level(frozenset({"sse2", "sse4_2"})) == "below AVX2"


def test_shortfall_names_the_missing_instructions_and_the_cost():
    def why(machine, precision):
        name, flags = sample(machine)
        return hardware.cpu_shortfall(precision, hardware.Cpu(name or "aarch64", flags, 2, 2))

    zen3 = why("amd_epyc_zen3_kvm", "bf16")
    assert zen3.startswith("this CPU (AMD EPYC: AVX2) has no AVX512-BF16 or AMX-BF16; oneDNN has no bf16 kernels")
    assert "10-20x slower than fp32" in zen3
    skylake = why("intel_xeon_skylake_sp", "bf16")
    assert "(Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz: AVX-512) has no AVX512-BF16 or AMX-BF16" in skylake
    assert "oneDNN emulates bf16 with AVX-512 fp32 arithmetic" in skylake
    assert "has no AVX512-FP16 or AMX-FP16; oneDNN emulates fp16" in why("amd_epyc_zen4_genoa", "fp16")
    assert why("aws_graviton2", "bf16").startswith("this CPU (aarch64: NEON) has no BF16; PyTorch emulates bf16")


def test_this_machine_agrees_with_torchs_cpuid_queries():
    """/proc/cpuinfo's flags (what the kernel enables) against torch's own CPUID queries."""
    name, flags = hardware.read_cpuinfo()
    for query, named in hardware.TORCH_QUERIES.items():
        if query == "_is_amx_tile_supported":
            named = {"amx_tile"}
        assert getattr(torch.cpu, query)() == (named <= flags), query
    assert hardware.torch_flags() <= flags | {"amx_bf16"}
    # oneDNN's "bf16 supported" holds on every AVX-512 CPU; native bf16 implies it, not the reverse
    if hardware.cpu_precisions(flags)["bf16"]:
        assert torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if "avx512f" not in flags:
        assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_without_proc_cpuinfo_torchs_queries_stand_in(tmp_path):
    name, flags = hardware.read_cpuinfo.__wrapped__(str(tmp_path / "absent"))
    assert flags == hardware.torch_flags() and name


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_gpu_types(gpu):
    name, capability = gpu
    bf16, fp16, auto = GPUS[gpu]
    native = hardware.gpu_precisions(capability)
    assert native == {"fp32": True, "bf16": bf16, "fp16": fp16}
    assert hardware.auto_precision(native) == auto
    yes = {True: "yes", False: "no"}
    assert device_query.gpu_line(1, fake_props(name, capability)) == (
        f"GPU 1: {name}, 16384 MiB, compute capability {capability[0]}.{capability[1]}, "
        f"bf16 tensor cores {yes[bf16]}, fp16 tensor cores {yes[fp16]}; --precision auto runs {auto}")


def test_other_devices_know_nothing():
    assert hardware.native_precisions(torch.device("meta")) is None
    assert hardware.auto_precision(None) == "fp32"
    assert hardware.shortfall("bf16", torch.device("meta")) is None


@pytest.fixture
def fake_machine(monkeypatch):
    """This process sees a Sapphire Rapids CPU and two CUDA devices, an H100 and a T4."""
    props = [fake_props("NVIDIA H100 80GB HBM3", (9, 0), 85_520_809_984), fake_props("Tesla T4", (7, 5))]
    monkeypatch.setattr(hardware, "read_cpuinfo", lambda: sample("intel_xeon_sapphire_rapids"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda d: (props[torch.device(d).index].major, props[torch.device(d).index].minor))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: props[torch.device(d).index].name)


def test_device_query_lists_cpu_and_gpus(fake_machine, capsys):
    assert main(["device_query"]) == 0
    err = capsys.readouterr().err
    assert "] CPU instruction sets: AVX2, AVX-512, AVX512-BF16, AVX512-FP16, AMX-BF16 (level AMX); native " \
           "precisions: fp32 yes, bf16 yes, fp16 yes; --precision auto runs bf16" in err
    assert ("] GPU 0: NVIDIA H100 80GB HBM3, 81559 MiB, compute capability 9.0, bf16 tensor cores yes, "
            "fp16 tensor cores yes; --precision auto runs bf16") in err
    assert "] GPU 1: Tesla T4, 16384 MiB, compute capability 7.5, bf16 tensor cores no" in err


def test_device_query_of_one_gpu_in_caffes_words(fake_machine, capsys):
    assert main(["device_query", "--gpu", "1"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"Name: +Tesla T4\n", err)
    assert re.search(r"BF16 tensor cores: +No\n", err) and re.search(r"FP16 tensor cores: +Yes\n", err)


def test_native_precisions_of_a_cuda_device(fake_machine):
    assert hardware.native_precisions(torch.device("cuda", 0))["bf16"]
    assert not hardware.native_precisions(torch.device("cuda", 1))["bf16"]
    assert hardware.shortfall("bf16", torch.device("cuda", 1)) == (
        "Tesla T4 (compute capability 7.5) has no bf16 tensor cores (they start at 8.0): little or nothing gained "
        "over fp32")
    assert hardware.shortfall("fp16", torch.device("cuda", 1)) is None
