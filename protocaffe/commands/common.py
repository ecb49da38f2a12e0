"""Flags and helpers shared by Caffe's subcommands."""
import torch

from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log
from protocaffe.proto import caffe_pb2
from protocaffe.speed import DEFAULT_PRECISION, Speed


def parse_gpus(value):
    """Caffe's --gpu: '' for the CPU, an id, a comma-separated list of ids, or 'all'; the list of ids."""
    if value in (None, ""):
        return []
    ids = None if value == "all" else value.split(",")
    try:
        ids = ids and [int(i) for i in ids]
    except ValueError:
        raise CaffeError(f"--gpu expects a device id, a comma-separated list of ids or 'all'; "
                         f"found '{value}'") from None
    if not torch.cuda.is_available():
        raise CaffeError(f"--gpu {value}: no CUDA device is available on this machine")
    count = torch.cuda.device_count()
    if ids is None:
        return list(range(count))
    for gpu in ids:
        if not 0 <= gpu < count:
            raise CaffeError(f"--gpu {value}: there is no GPU {gpu}; this machine has {count} CUDA "
                             f"device(s), numbered 0 to {count - 1}")
    if len(set(ids)) != len(ids):
        raise CaffeError(f"--gpu {value}: a device is listed twice")
    return ids


def parse_gpu(value):
    """--gpu for the commands that run on one device: None for the CPU, else the device id."""
    ids = parse_gpus(value)
    if len(ids) > 1:
        raise CaffeError(f"--gpu {value}: this command runs on one device; give one id")
    return ids[0] if ids else None


def device_for(gpu):
    if gpu is None:
        log.info("Use CPU.")
        return torch.device("cpu")
    log.info("Use GPU with device ID %d", gpu)
    return torch.device("cuda", gpu)


def add_net_flags(f, iterations=50):
    f.flag("model", "", "the model definition protocol buffer text file")
    f.flag("weights", "", "the pretrained weights (.caffemodel), comma-separated for several")
    f.flag("iterations", iterations, "the number of iterations to run")
    f.flag("gpu", "", "the GPU id to use; empty for the CPU")
    f.flag("phase", "", "network phase (TRAIN or TEST)")
    f.flag("level", 0, "network level")
    f.flag("stage", "", "network stages, comma-separated")
    f.flag("log_dir", "", "also write the log to a file in this folder")
    return f


def check_iterations(args):
    """--iterations must be at least 1: the averages divide by it."""
    if args.iterations < 1:
        raise CaffeError(f"--iterations must be at least 1, found {args.iterations}")


def stages(args):
    return [s for s in args.stage.split(",") if s]


def phase(args, default):
    """Caffe's get_phase_from_flags: --phase TRAIN or TEST, ``default`` when not given."""
    if not args.phase:
        return default
    if args.phase not in ("TRAIN", "TEST"):
        raise CaffeError(f"--phase must be TRAIN or TEST; found '{args.phase}'")
    return caffe_pb2.Phase.Value(args.phase)


def add_speed_flags(f, precision=DEFAULT_PRECISION):
    """--precision, --compile and --cuda_graphs (protocaffe/speed.py)."""
    f.flag("precision", precision, "arithmetic of forward and backward: fp32 (Caffe's), bf16 or fp16"
           + ("; empty for the solver's precision field" if not precision else ""))
    f.flag("compile", False, "run the net through torch.compile")
    f.flag("cuda_graphs", False, "replay the compiled step as CUDA graphs (CUDA only)")
    return f


def speed_from(args, precision=None):
    return Speed(precision or args.precision, compile=args.compile, cuda_graphs=args.cuda_graphs)
