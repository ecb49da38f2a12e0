"""``protocaffe train --solver S [--weights W | --snapshot X] [--gpu N]``: Caffe's ``caffe train``."""
from protocaffe import log as logs
from protocaffe.commands.common import add_speed_flags, parse_gpu, speed_from
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log
from protocaffe.solver import Solver, read_solver_param
from protocaffe.speed import check_precision


def run(argv):
    f = Flags("train", __doc__.splitlines()[0])
    f.flag("solver", "", "the solver definition protocol buffer text file")
    f.flag("weights", "", "pretrained weights to finetune from, comma-separated; not with --snapshot")
    f.flag("snapshot", "", "a .solverstate to resume training from")
    f.flag("gpu", "", "the GPU id to use; empty for the CPU (or the solver's solver_mode)")
    f.flag("level", 0, "the train net's level")
    f.flag("stage", "", "the train net's stages, comma-separated")
    f.flag("sigint_effect", "stop", "what SIGINT does: stop, snapshot or none")
    f.flag("sighup_effect", "snapshot", "what SIGHUP does: stop, snapshot or none")
    f.flag("log_dir", "", "also write the log to a file in this folder")
    add_speed_flags(f, precision="")
    args = f.parse(argv)
    logs.setup(args.log_dir or None)
    if not args.solver:
        raise CaffeError("need a solver definition to train: --solver <file>")
    if args.snapshot and args.weights:
        raise CaffeError("give a snapshot to resume training or weights to finetune, but not both")
    param = read_solver_param(args.solver)
    param.train_state.level = args.level
    param.train_state.stage.extend(s for s in args.stage.split(",") if s)
    if args.precision:
        param.precision = check_precision(args.precision)
    gpu = parse_gpu(args.gpu)
    log.info("Use CPU." if gpu is None else f"Using GPUs {gpu}")
    solver = Solver(param, gpu=gpu, weights=args.weights or None, speed=speed_from(args, param.precision))
    solver.handle_signals(args.sigint_effect, args.sighup_effect)
    log.info("Starting Optimization")
    solver.solve(args.snapshot or None)
    log.info("Optimization Done.")
    return 0
