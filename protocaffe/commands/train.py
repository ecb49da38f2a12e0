"""``protocaffe train --solver S [--weights W | --snapshot X] [--gpu N | --gpu 0,1,... | --gpu all]``: Caffe's ``caffe train``.

Several GPUs train data-parallel, one process each (protocaffe.distributed); so
does every process torchrun starts (``torchrun ... -m protocaffe train ...``).
"""
import torch

from protocaffe import distributed, log as logs
from protocaffe.commands.common import add_speed_flags, parse_gpus, speed_from
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log
from protocaffe.solver import CaffeSolver, read_solver_param, solver_gpu
from protocaffe.speed import check_precision


def run(argv):
    f = Flags("train", __doc__.splitlines()[0])
    f.flag("solver", "", "the solver definition protocol buffer text file")
    f.flag("weights", "", "pretrained weights to finetune from, comma-separated; not with --snapshot")
    f.flag("snapshot", "", "a .solverstate to resume training from")
    f.flag("gpu", "", "the GPU ids to use, comma-separated, or 'all'; empty for the CPU "
                      "(or the solver's solver_mode)")
    f.flag("level", 0, "the train net's level")
    f.flag("stage", "", "the train net's stages, comma-separated")
    f.flag("sigint_effect", "stop", "what SIGINT does: stop, snapshot or none")
    f.flag("sighup_effect", "snapshot", "what SIGHUP does: stop, snapshot or none")
    f.flag("log_dir", "", "also write the log to a file in this folder")
    add_speed_flags(f, precision="")
    args = f.parse(argv)
    if not args.solver:
        raise CaffeError("need a solver definition to train: --solver <file>")
    if args.snapshot and args.weights:
        raise CaffeError("give a snapshot to resume training or weights to finetune, but not both")
    param = read_solver_param(args.solver)
    gpus = parse_gpus(args.gpu)
    if not gpus and solver_gpu(param) is not None and torch.cuda.is_available():
        gpus = parse_gpus(str(solver_gpu(param)))  # Caffe: without --gpu, the file's solver_mode: GPU
    rank = distributed.from_environment(gpus, solver_gpu(param) is not None)
    logs.setup(args.log_dir if rank is None or rank.rank == 0 else None)
    if rank is not None:
        return distributed.run(rank, train, args)
    log.info("Use CPU." if not gpus else f"Using GPUs {', '.join(map(str, gpus))}")
    if len(gpus) > 1:
        return distributed.launch(train, (args,), gpus, args.log_dir or None)
    return train(args, None, gpus[0] if gpus else None)


def train(args, rank, gpu=None):
    """Train with one solver: the whole job, or one rank's share (``rank``, a distributed.Rank)."""
    param = read_solver_param(args.solver)
    param.train_state.level = args.level
    param.train_state.stage.extend(s for s in args.stage.split(",") if s)
    if args.precision:
        param.precision = check_precision(args.precision)
    if rank is not None:
        log.info("Rank %d of %d, on %s", rank.rank, rank.world, rank.device)
        distributed.seed(param, rank)
        gpu = rank.gpu
    solver = CaffeSolver(param, gpu=gpu, weights=args.weights or None, speed=speed_from(args, param.precision))
    solver.handle_signals(args.sigint_effect, args.sighup_effect)
    if rank is not None:
        distributed.attach(solver, rank)
    log.info("Starting Optimization")
    solver.solve(args.snapshot or None)
    log.info("Optimization Done.")
    return 0
