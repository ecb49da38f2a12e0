"""Data-parallel training on torch.distributed, with the semantics of Caffe's ``train --gpu 0,1,...``.

One process (rank) per device, each running the solver's own loop at the
prototxt's batch_size. This module wraps that loop; the loop stays as it is:

- data: a TRAIN Data layer on rank r of N reads records r, r + N, r + 2N, ...
  (protocaffe.data.layers, from the process group this module joins);
- gradients: DistributedDataParallel all-reduces them in buckets while the
  iteration's last backward runs (the earlier iter_size backwards accumulate
  locally), summed over the ranks and divided by N, before the update;
- speaking: rank 0 (Caffe's root solver) alone tests, displays and snapshots;
  the other ranks log warnings only and never wait on rank 0's logging;
- signals: the action a signal asked for on any rank is agreed on by every
  rank at each iteration boundary (one all-reduce of one number), so all stop
  or snapshot at the same iteration;
- seeds: rank r seeds with random_seed + r (as Caffe), and DDP copies rank 0's
  weights to all ranks at the start; BatchNorm statistics stay per rank.

Launch: :func:`launch` spawns one process per GPU of ``--gpu 0,1,...`` on this
machine (NCCL, rendezvous on a free localhost port); under torchrun,
:func:`from_environment` reads RANK, WORLD_SIZE and LOCAL_RANK. Collectives
time out after $PROTOCAFFE_DIST_TIMEOUT seconds (default 1800: rank 0's test
rounds and snapshots must fit inside it), and a rank that dies ends the job.
"""
import datetime
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from protocaffe import log as logs
from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log

TIMEOUT_VARIABLE = "PROTOCAFFE_DIST_TIMEOUT"
ACTIONS = (None, "snapshot", "stop")
"""Signal actions in the order of precedence: when ranks differ, the largest wins."""


@dataclass
class Rank:
    """This process's place in the job."""
    rank: int
    world: int
    local_rank: int
    gpu: object = None      # the CUDA device id, None on the CPU

    @property
    def backend(self):
        return "gloo" if self.gpu is None else "nccl"

    @property
    def device(self):
        return torch.device("cpu") if self.gpu is None else torch.device("cuda", self.gpu)


def from_environment(gpus, solver_mode_gpu):
    """The Rank torchrun's RANK, WORLD_SIZE and LOCAL_RANK describe, or None outside torchrun.

    The device is the LOCAL_RANK-th of ``gpus`` (the --gpu list), or GPU LOCAL_RANK
    when no list is given and the solver asks for the GPU; the CPU without CUDA.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    gpu = None
    if gpus:
        if len(gpus) != local_world:
            raise CaffeError(f"--gpu names {len(gpus)} devices but torchrun starts {local_world} "
                             "processes on this machine; give one device per process, or no --gpu")
        gpu = gpus[local]
    elif solver_mode_gpu and torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise CaffeError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}")
        gpu = local
    return Rank(rank, world, local, gpu)


def _timeout():
    value = os.environ.get(TIMEOUT_VARIABLE, "1800")
    try:
        return datetime.timedelta(seconds=float(value))
    except ValueError:
        raise CaffeError(f"${TIMEOUT_VARIABLE} must be a number of seconds, found '{value}'") from None


def _check_backend(backend, what):
    if not dist.is_available():
        raise CaffeError(f"{what}: this PyTorch build has no torch.distributed")
    if backend == "nccl" and not dist.is_nccl_available():
        raise CaffeError(f"{what}: training on several GPUs needs NCCL, which this PyTorch build "
                         f"({torch.__version__}) lacks; install a CUDA build of PyTorch")


def run(rank, fn, *args):
    """``fn(*args, rank)`` as one rank of the job: join the process group, train, leave.

    A collective that fails (a rank died, or it timed out) becomes a CaffeError."""
    if rank.rank != 0:
        log.setLevel(logging.WARNING)
    _check_backend(rank.backend, f"rank {rank.rank}")
    if rank.gpu is not None:
        torch.cuda.set_device(rank.gpu)
    try:
        dist.init_process_group(rank.backend, rank=rank.rank, world_size=rank.world, timeout=_timeout())
    except dist.DistError as e:
        raise CaffeError(f"rank {rank.rank}: could not meet the other ranks at {os.environ.get('MASTER_ADDR')}:"
                         f"{os.environ.get('MASTER_PORT')}: {_first_line(e)}") from None
    try:
        return fn(*args, rank)
    except RuntimeError as e:
        if not _lost_contact(e):
            raise
        raise CaffeError(f"rank {rank.rank}: lost the other ranks (one died, or a collective timed "
                         f"out): {_first_line(e)}") from None
    except CaffeError as e:
        raise e if rank.rank == 0 else CaffeError(f"rank {rank.rank}: {e}") from None
    finally:
        dist.destroy_process_group()


def _first_line(error):
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def _lost_contact(error):
    """Whether a RuntimeError comes from a collective (NCCL's and timeouts are DistErrors, gloo's plain)."""
    return isinstance(error, dist.DistError) or "gloo" in str(error)


def seed(param, rank):
    """Caffe's seeding with several solvers: rank r uses random_seed + r (data draws differ per rank)."""
    if param.random_seed >= 0:
        param.random_seed += rank.rank


def attach(solver, rank):
    """Make ``solver`` one rank of the job: DDP gradients, agreed signals, rank 0 speaking."""
    if solver.param.lr_policy == "plateau":
        raise CaffeError("lr_policy plateau reads rank 0's test results and is not supported "
                         "with several ranks")
    ddp = DistributedDataParallel(solver.net, device_ids=None if rank.gpu is None else [rank.gpu],
                                  forward_sync_buffers=False, gradient_as_bucket_view=True)
    solver.root = rank.rank == 0
    flag = torch.zeros(1, dtype=torch.int32, device=rank.device)
    local_request = solver.take_request

    def train_forward(last):
        if last:
            return ddp()
        with ddp.no_sync():
            return ddp()

    def take_request():
        flag.fill_(ACTIONS.index(local_request()))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return ACTIONS[int(flag.item())]

    solver.train_forward, solver.take_request = train_forward, take_request


# ---- Caffe::solver_count() and solver_rank() ---------------------------------------------

_SOLVERS = {"count": 1, "rank": 0}
"""pycaffe's set_solver_count / set_solver_rank, for processes not (yet) in a process group."""


def solver_count():
    """Caffe::solver_count(): the size of this process's group, else pycaffe's setting (1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _SOLVERS["count"]


def solver_rank():
    """Caffe::solver_rank(): this process's rank in its group, else pycaffe's setting (0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _SOLVERS["rank"]


def set_solver_count(count):
    _SOLVERS["count"] = int(count)


def set_solver_rank(rank):
    """Set this process's rank; as in Caffe, only rank 0 (the root solver) logs at INFO."""
    if int(rank) != 0 and "level" not in _SOLVERS:
        _SOLVERS["level"] = log.level
        log.setLevel(logging.WARNING)
    elif int(rank) == 0 and "level" in _SOLVERS:
        log.setLevel(_SOLVERS.pop("level"))
    _SOLVERS["rank"] = int(rank)


# ---- several GPUs of this machine ----------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(index, fn, args, gpus, port, log_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores, as torchrun does
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(gpus)))
    logs.setup(log_dir if index == 0 else None)
    try:
        code = run(Rank(index, len(gpus), index, gpus[index]), fn, *args)
    except CaffeError as e:
        print(f"protocaffe train: error: {e}", file=sys.stderr)
        code = 1
    sys.exit(code or 0)


def _failures(context, gpus, first):
    """The ranks that ended on their own (not stopped by the launcher's SIGTERM), as one line."""
    def how(code):
        return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    ended = [i for i, p in enumerate(context.processes) if p.exitcode not in (0, -signal.SIGTERM)] or [first]
    return "; ".join(f"rank {i} (device {gpus[i]}) {how(context.processes[i].exitcode)}" for i in ended) + \
        "; the other ranks were stopped"


def launch(fn, args, gpus, log_dir=None, backend="nccl"):
    """Run ``fn(*args, rank)`` in one spawned process per device of ``gpus``; 0 when all succeed.

    ``gpus`` entries are CUDA ids, or None for a CPU rank (with backend gloo, for tests).
    SIGINT and SIGHUP sent to this process are passed on to every rank. When a
    rank fails, the others are stopped and a CaffeError names it.
    """
    _check_backend(backend, f"--gpu {','.join(map(str, gpus))}")
    context = mp.start_processes(_spawned, args=(fn, args, gpus, _free_port(), log_dir),
                                 nprocs=len(gpus), join=False, start_method="spawn")

    def forward(signum, frame):
        for p in context.processes:
            if p.is_alive():
                os.kill(p.pid, signum)
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGHUP)}
    try:
        while not context.join():
            pass
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as e:
        if isinstance(e, mp.ProcessRaisedException):
            print(e.msg, file=sys.stderr)
        raise CaffeError(_failures(context, gpus, e.error_index)) from None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0
