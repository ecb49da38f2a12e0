"""``protocaffe device_query [--gpu N]``: what Caffe's device_query shows of a CUDA device."""
import torch

from protocaffe import log as logs
from protocaffe.commands.common import parse_gpu
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log


def run(argv):
    f = Flags("device_query", __doc__.splitlines()[0])
    f.flag("gpu", "0", "the GPU id to query")
    args = f.parse(argv)
    logs.setup()
    gpu = parse_gpu(args.gpu)
    log.info("Querying GPUs %d", gpu)
    props = torch.cuda.get_device_properties(gpu)
    log.info("Device id:                     %d", gpu)
    log.info("Major revision number:         %d", props.major)
    log.info("Minor revision number:         %d", props.minor)
    log.info("Name:                          %s", props.name)
    log.info("Total global memory:           %d", props.total_memory)
    log.info("Number of multiprocessors:     %d", props.multi_processor_count)
    return 0
