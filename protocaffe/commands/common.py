"""Flags and helpers shared by Caffe's subcommands."""
import torch

from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log
from protocaffe.proto import caffe_pb2
from protocaffe.speed import DEFAULT_PRECISION, Speed


def parse_gpu(value):
    """Caffe's --gpu: '' for the CPU, an id, 'all', or a list. One device only until scale-out lands."""
    if value in (None, ""):
        return None
    ids = list(range(torch.cuda.device_count())) if value == "all" else value.split(",")
    if value == "all" and not ids:
        raise CaffeError("--gpu all: no CUDA device is available")
    if len(ids) > 1:
        raise CaffeError(f"--gpu {value}: training on several devices at once is not supported yet "
                         "(it comes with the torch.distributed scale-out); give one device id")
    try:
        gpu = int(ids[0])
    except ValueError:
        raise CaffeError(f"--gpu expects a device id, 'all' or nothing; found '{value}'") from None
    if not torch.cuda.is_available():
        raise CaffeError(f"--gpu {gpu}: no CUDA device is available on this machine")
    if gpu >= torch.cuda.device_count():
        raise CaffeError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) present")
    return gpu


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
