"""``protocaffe device_query [--gpu N]``: what Caffe's device_query shows of a CUDA device.

Without ``--gpu`` (where Caffe refuses), it lists what it finds: the CPU and every CUDA
device, one line each.
"""
import os
import platform

import torch

from protocaffe import log as logs
from protocaffe.commands.common import parse_gpu
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log


def list_devices():
    log.info("CPU: %s, %d logical cores, torch uses %d threads", platform.processor() or platform.machine(),
             os.cpu_count() or 0, torch.get_num_threads())
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        log.info("No CUDA device found (torch %s)", torch.__version__)
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        log.info("GPU %d: %s, %d MiB, compute capability %d.%d", i, props.name,
                 props.total_memory // 2**20, props.major, props.minor)


def query(gpu):
    log.info("Querying GPUs %d", gpu)
    props = torch.cuda.get_device_properties(gpu)
    log.info("Device id:                     %d", gpu)
    log.info("Major revision number:         %d", props.major)
    log.info("Minor revision number:         %d", props.minor)
    log.info("Name:                          %s", props.name)
    log.info("Total global memory:           %d", props.total_memory)
    log.info("Number of multiprocessors:     %d", props.multi_processor_count)


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
