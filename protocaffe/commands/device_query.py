"""``protocaffe device_query [--gpu N]``: what Caffe's device_query shows of a CUDA device.

Without ``--gpu`` (where Caffe refuses), it lists what it finds: the CPU (its instruction
sets and the precisions it computes natively) and every CUDA device (its tensor cores),
each with what ``--precision auto`` runs there (protocaffe/hardware.py).
"""
import torch

from protocaffe import hardware, log as logs
from protocaffe.commands.common import parse_gpu
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log


def yes(flag):
    return "yes" if flag else "no"


def cpu_lines(info):
    """device_query's lines for a CPU (a hardware.Cpu)."""
    native = hardware.cpu_precisions(info.flags)
    return [f"CPU: {info.name}, {info.logical_cores} logical cores, torch uses {info.threads} threads",
            f"CPU instruction sets: {', '.join(hardware.features(info.flags)) or 'none of note'} "
            f"(level {hardware.isa_level(info.flags)}); native precisions: "
            + ", ".join(f"{p} {yes(n)}" for p, n in native.items())
            + f"; --precision auto runs {hardware.auto_precision(native)}"]


def gpu_line(index, props):
    """device_query's line for CUDA device ``index`` (torch.cuda.get_device_properties)."""
    native = hardware.gpu_precisions((props.major, props.minor))
    return (f"GPU {index}: {props.name}, {props.total_memory // 2**20} MiB, compute capability "
            f"{props.major}.{props.minor}, bf16 tensor cores {yes(native['bf16'])}, fp16 tensor cores "
            f"{yes(native['fp16'])}; --precision auto runs {hardware.auto_precision(native)}")


def list_devices():
    for line in cpu_lines(hardware.cpu()):
        log.info("%s", line)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        log.info("No CUDA device found (torch %s)", torch.__version__)
    for i in range(count):
        log.info("%s", gpu_line(i, torch.cuda.get_device_properties(i)))


def query(gpu):
    log.info("Querying GPUs %d", gpu)
    props = torch.cuda.get_device_properties(gpu)
    log.info("Device id:                     %d", gpu)
    log.info("Major revision number:         %d", props.major)
    log.info("Minor revision number:         %d", props.minor)
    log.info("Name:                          %s", props.name)
    log.info("Total global memory:           %d", props.total_memory)
    log.info("Number of multiprocessors:     %d", props.multi_processor_count)
    native = hardware.gpu_precisions((props.major, props.minor))
    log.info("BF16 tensor cores:             %s", yes(native["bf16"]).capitalize())
    log.info("FP16 tensor cores:             %s", yes(native["fp16"]).capitalize())


def run(argv):
    f = Flags("device_query", __doc__.splitlines()[0])
    f.flag("gpu", "", "the GPU id to query; empty to list every device found")
    args = f.parse(argv)
    logs.setup()
    gpu = parse_gpu(args.gpu)
    if gpu is None:
        list_devices()
    else:
        query(gpu)
    return 0
