"""--precision auto and the warning for a forced low precision (protocaffe/speed.py): each
CPU type as a /proc/cpuinfo sample (tests/data/cpuinfo), CUDA devices by compute capability."""
import re
import types

import pytest
import torch

from conftest import DATA
from protocaffe import hardware, speed as speeds
from protocaffe.cli import main
from protocaffe.proto import caffe_pb2
from protocaffe.solver import CaffeSolver as Solver
from protocaffe.speed import PRECISIONS, Speed
from test_speed import solver_param

CPU = torch.device("cpu")
THIS_CPU = hardware.auto_precision(hardware.cpu_precisions(hardware.cpu().flags))
"""What auto runs on the machine running the tests (fp32 on the project's AVX2 EPYC)."""


def fake_cpu(monkeypatch, machine):
    monkeypatch.setattr(hardware, "read_cpuinfo",
                        lambda: hardware.parse_cpuinfo((DATA / "cpuinfo" / f"{machine}.txt").read_text()))


@pytest.fixture
def warned(monkeypatch):
    """The warnings protocaffe.speed logs, each once as logged (the once-only memory cleared)."""
    found = []
    speeds.warn_emulated.cache_clear()
    monkeypatch.setattr(speeds.log, "warning", lambda message, *args: found.append(message % args))
    yield found
    speeds.warn_emulated.cache_clear()


@pytest.mark.parametrize("machine, chosen", [("amd_epyc_zen3_kvm", "fp32"), ("intel_xeon_skylake_sp", "fp32"),
                                             ("amd_epyc_zen4_genoa", "bf16"),
                                             ("intel_xeon_sapphire_rapids", "bf16")])
def test_auto_on_each_cpu_type(machine, chosen, monkeypatch, logged, warned):
    fake_cpu(monkeypatch, machine)
    speed = Speed("auto").resolve(CPU)
    assert speed.precision == chosen and speed.dtype == PRECISIONS[chosen]
    assert f"Precision auto on cpu: {chosen}" in logged.text and not warned


@pytest.mark.parametrize("capability, chosen", [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_by_compute_capability(capability, chosen, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    assert Speed("auto").resolve(torch.device("cuda", 0)).precision == chosen


def test_auto_on_an_unknown_device_is_fp32():
    assert Speed("auto").resolve(torch.device("meta")).precision == "fp32"


def test_forced_bf16_on_a_cpu_without_it_warns_once(monkeypatch, warned):
    fake_cpu(monkeypatch, "amd_epyc_zen3_kvm")
    for precision in ("fp32", "auto", "bf16", "bf16"):
        Speed(precision).resolve(CPU)
    Speed("fp16").resolve(CPU)
    assert len(warned) == 2
    assert warned[0].startswith("precision bf16 on cpu runs emulated: this CPU (AMD EPYC: AVX2) has no "
                               "AVX512-BF16 or AMX-BF16; oneDNN has no bf16 kernels below AVX-512")
    assert warned[0].endswith("--precision auto runs fp32 here.")
    assert "has no AVX512-FP16 or AMX-FP16" in warned[1]


def test_forced_bf16_where_native_says_nothing(monkeypatch, warned):
    fake_cpu(monkeypatch, "intel_xeon_sapphire_rapids")
    Speed("bf16").resolve(CPU)
    Speed("fp16").resolve(CPU)
    fake_cpu(monkeypatch, "amd_epyc_zen4_genoa")
    Speed("bf16").resolve(CPU)
    assert not warned


def test_fp32_leaves_the_callers_autocast_alone():
    """fp32 changes nothing, not even a caller's autocast around it; bf16 opens its own."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with Speed("fp32").autocast(CPU):
            assert torch.is_autocast_enabled("cpu")
    with Speed("bf16").autocast(CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with Speed("fp32").autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")


def test_solver_precision_auto():
    assert solver_param(precision="auto").precision == "auto"
    assert Solver(solver_param(precision="auto")).speed.precision == THIS_CPU


def test_default_stays_fp32():
    """auto is not the default (BENCHMARKS.md, "How --precision auto was decided")."""
    assert caffe_pb2.SolverParameter().precision == "fp32" and Speed().precision == "fp32"


def test_time_with_auto_and_forced_bf16(golden_cwd, capsys):
    assert main(["time", "--model", "solver/mini_caffenet.prototxt", "--iterations", "1", "--precision", "auto"]) == 0
    err = capsys.readouterr().err
    assert f"] Precision auto on cpu: {THIS_CPU}" in err and f"] Precision {THIS_CPU}: " in err
    speeds.warn_emulated.cache_clear()  # once per process: this one may have warned before
    assert main(["time", "--model", "solver/mini_caffenet.prototxt", "--iterations", "1", "--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert "] Precision bf16: " in err
    assert len(re.findall(r"^W\d{4} .*runs emulated", err, re.M)) == (THIS_CPU == "fp32")



class CudaNetStub:
    """What Speed.prepare reads of a net, as if the net were on a CUDA device."""

    def __init__(self):
        self.ctx = types.SimpleNamespace(device=torch.device("cuda", 0))
        self.layers, self.formats = {}, []

    def to(self, memory_format):
        self.formats.append(memory_format)
        return self


def test_prepare_on_cuda(monkeypatch):
    """On a bf16 GPU auto runs bf16, NHWC; fp32 there is IEEE float32: cuDNN's TF32 turned off."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    net, speed = CudaNetStub(), Speed("auto")
    speed.prepare(net)
    assert speed.precision == "bf16" and net.formats == [torch.channels_last]
    assert torch.backends.cudnn.allow_tf32
    Speed("fp32").prepare(CudaNetStub())
    assert not torch.backends.cudnn.allow_tf32
