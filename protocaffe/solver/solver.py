"""Caffe's solver: the training loop, testing, snapshots and resume.

The loop (``step``) is Caffe's, top to bottom:

    test if it is time; zero the gradients
    forward + backward iter_size times; average the loss; smooth it over average_loss
    display; apply the update (clip, normalize, regularize, rule); iter += 1
    snapshot if it is time; stop if asked (SIGINT)

Update rules and lr policies are the small functions in updates.py and policies.py.
"""
import math
import os
import signal
import time

import numpy as np
import torch
from google.protobuf import unknown_fields

from protocaffe import dialects, fileio, schema
from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log, g
from protocaffe import caffe_random
from protocaffe.net import CaffeNet, filter_net, read_net_param
from protocaffe.proto import caffe_pb2
from protocaffe.solver.detection import SCORES
from protocaffe.solver.policies import POLICIES, check_policy, plateau_observe
from protocaffe.solver.updates import HISTORY, RULES, regularize
from protocaffe.speed import Speed
from protocaffe.upgrade import upgrade_net, upgrade_solver

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def read_solver_param(path):
    """Read a solver prototxt (a fork's fields by name, its dialect named in the log), upgrade it
    (solver_type -> type) and check its counts and lr policy's fields (check_solver)."""
    param = fileio.read_text(path, caffe_pb2.SolverParameter)
    param = upgrade_solver(dialects.recognise(param, os.fspath(path)), os.fspath(path))
    check_solver(param, os.fspath(path))
    return param


def check_solver(p, where, warn=True):
    """iter_size and average_loss at least 1 (the loop divides by both; Caffe checks
    average_loss), then the lr policy's fields (check_policy)."""
    for name in ("iter_size", "average_loss"):
        if getattr(p, name) < 1:
            raise CaffeError(f"{where}: {name} must be at least 1, found {getattr(p, name)}")
    check_policy(p, where, warn)


def _state(phase, *merge):
    state = caffe_pb2.NetState(phase=phase)
    for s in merge:
        state.MergeFrom(s)
    return state


def _net_params(p):
    """The train net and the test nets' NetParameters and states, as Caffe's InitTrainNet/InitTestNets."""
    sources = [f for f in ("train_net_param", "train_net", "net_param", "net")
               if p.HasField(f)]
    if len(sources) != 1:
        raise CaffeError("the solver must give exactly one of train_net_param, train_net, net_param "
                         f"or net; found {sources or 'none'}")

    def load(value):
        return upgrade_net(value, "<solver net_param>") if isinstance(value, caffe_pb2.NetParameter) \
            else read_net_param(value)

    generic = p.net_param if p.HasField("net_param") else (p.net if p.HasField("net") else None)
    train = load(getattr(p, sources[0]))
    tests = [load(t) for t in p.test_net_param] + [load(t) for t in p.test_net]
    if generic is not None and len(p.test_iter) > len(tests):
        base = load(generic)
        tests += [base] * (len(p.test_iter) - len(tests))
    if len(p.test_iter) != len(tests):
        raise CaffeError(f"test_iter must be given once per test net: {len(tests)} test nets, "
                         f"{len(p.test_iter)} test_iter")
    if len(p.test_state) not in (0, len(tests)):
        raise CaffeError(f"test_state must be given once per test net ({len(tests)}), found {len(p.test_state)}")
    train_state = _state(TRAIN, train.state, p.train_state)
    test_states = [_state(TEST, t.state, *( [p.test_state[i]] if len(p.test_state) else []))
                   for i, t in enumerate(tests)]
    return (train, train_state), list(zip(tests, test_states))


def solver_gpu(p):
    """The GPU the solver file asks for, or None: Caffe's rule (tools/caffe.cpp, train) reads
    ``solver_mode`` only where the file sets it, so a solver without it runs on the CPU (the
    field's default, GPU, is never used); ``device_id`` is 0 unless set."""
    if p.HasField("solver_mode") and p.solver_mode == caffe_pb2.SolverParameter.GPU:
        return p.device_id
    return None


def _device(p, gpu=None):
    if gpu is None and solver_gpu(p) is not None:
        if torch.cuda.is_available():
            gpu = solver_gpu(p)
        else:
            log.warning("solver_mode is GPU but no CUDA device is available; running on the CPU")
    if gpu is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise CaffeError(f"GPU {gpu} was asked for, but no CUDA device is available")
    if gpu >= torch.cuda.device_count():
        raise CaffeError(f"GPU {gpu} was asked for, but only {torch.cuda.device_count()} are present")
    return torch.device("cuda", gpu)


class CaffeSolver:
    """A Caffe solver of the type in its prototxt (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam):
    the training loop under pycaffe's :class:`protocaffe.pycaffe.Solver`, as CaffeNet is under its Net."""

    def __init__(self, param_or_path, *, gpu=None, weights=None, speed=None):
        p = read_solver_param(param_or_path) if isinstance(param_or_path, (str, os.PathLike)) \
            else param_or_path
        self.param = p
        if p.type not in RULES:
            raise CaffeError(f"unknown solver type '{p.type}'; known: {', '.join(RULES)}")
        if p.lr_policy not in POLICIES:
            raise CaffeError(f"unknown lr_policy '{p.lr_policy}'; known: {', '.join(POLICIES)}")
        check_solver(p, "the solver", warn=False)  # read_solver_param warns of unset fields
        if p.regularization_type not in ("L1", "L2"):
            raise CaffeError(f"unknown regularization_type '{p.regularization_type}'; use L1 or L2")
        if schema.get(p, "eval_type") not in SCORES:
            raise CaffeError(f"unknown eval_type '{schema.get(p, 'eval_type')}'; known: {', '.join(SCORES)}")
        self.rule = RULES[p.type]
        self.device = _device(p, gpu)
        seed = p.random_seed if p.random_seed >= 0 else None
        if seed is not None:
            torch.manual_seed(seed)
        log.info("Initializing solver from parameters: \n%s", p)
        (train, train_state), tests = _net_params(p)
        log.info("Creating training net")
        # one Caffe random stream for all the nets, as Caffe::set_random_seed starts it
        stream = caffe_random.Stream(seed) if seed is not None else None
        self.net = CaffeNet(filter_net(train, train_state), seed=seed, caffe_stream=stream,
                             device=self.device).to(self.device)
        self.net.keep_all_blobs = False  # the loop reads outputs only: free the rest early
        self.test_nets = []
        for i, (t, state) in enumerate(tests):
            log.info("Creating test net (#%d) specified by the solver", i)
            test_net = CaffeNet(filter_net(t, state), seed=seed, caffe_stream=stream,
                                 device=self.device).to(self.device)
            test_net.keep_all_blobs = False
            share_trained_layers(test_net, self.net)
            self.test_nets.append(test_net)
        # speed settings (protocaffe/speed.py): precision, layout, compilation; fp32 changes nothing
        self.speed = speed if speed is not None else Speed(p.precision)
        for net in [self.net] + self.test_nets:
            self.speed.prepare(net)
        self.params = self.net.learnable
        self.history = [[torch.zeros_like(lp.tensor) for _ in range(HISTORY[p.type])] for lp in self.params]
        self.iter = 0
        self.current_step = 0
        self.plateau_best, self.plateau_wait = None, 0
        self.losses = []
        self.smoothed_loss = 0.0
        self.requested_action = None
        #: Caffe's root_solver(): only the root tests, displays and snapshots (hook: protocaffe.distributed)
        self.root = True
        for w in list(p.weights) + ([weights] if isinstance(weights, str) else list(weights or [])):
            self.copy_weights(w)

    # ---- weights ------------------------------------------------------------------------

    def copy_weights(self, paths):
        """Caffe's --weights: comma-separated .caffemodel files copied into every net by layer name."""
        for path in str(paths).split(","):
            log.info("Finetuning from %s", path)
            self.net.copy_from(path)
            for t in self.test_nets:
                t.copy_from(path)

    # ---- the loop -------------------------------------------------------------------------

    def solve(self, resume_file=None):
        """Train to max_iter (Caffe's Solver::Solve), with a final snapshot, display and test."""
        p = self.param
        log.info("Solving %s", self.net.param.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        stopped = self.step(p.max_iter - self.iter)
        if self.root and p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if stopped:
            log.info("Optimization stopped early.")
            return
        if not self.root:
            return
        if p.display and self.iter % p.display == 0:
            with torch.no_grad(), self.speed.autocast(self.device):
                loss = float(self.net.loss(self.net()))
            self._smooth(loss, start_iter)
            log.info("Iteration %d, loss = %s", self.iter, g(float(self.smoothed_loss)))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def step(self, iters):
        """Run ``iters`` iterations; returns True when stopped early by a signal."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self.losses, self.smoothed_loss = [], 0.0
        last_time, last_iter = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            if self.root and p.test_interval and self.iter % p.test_interval == 0 and \
                    (self.iter > 0 or p.test_initialization):
                self.test_all()
            for lp in self.params:
                lp.tensor.grad = None
            display = self.root and p.display and self.iter % p.display == 0
            loss, outputs = 0.0, None
            for k in range(p.iter_size):
                with self.speed.autocast(self.device):
                    blobs = self.train_forward(last=k == p.iter_size - 1)
                    total = self.net.loss(blobs)
                if total.requires_grad:
                    self.speed.backward(total)  # fp16: the loss scaled
                loss = loss + total.detach().double()  # stays on the device: no sync per iteration
                outputs = blobs
            loss /= p.iter_size
            self._smooth(loss, start_iter)
            if display:
                lapse = time.perf_counter() - last_time
                speed = (self.iter - last_iter) / lapse if lapse > 0 else 0.0
                log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter, g(speed),
                         g(lapse), p.display, g(float(self.smoothed_loss)))
                last_time, last_iter = time.perf_counter(), self.iter
                self._log_outputs("Train", self.net,
                                 {n: outputs[n].detach().cpu().numpy() for n in self.net.output_names})
            if self.speed.unscale(self.params):  # fp16: False when the scaled gradients overflowed
                self.apply_update()
            else:
                log.info("Iteration %d: gradients overflowed in fp16; update skipped, loss scale lowered",
                         self.iter)
            self.iter += 1
            action = self.take_request()
            if self.root and ((p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot"):
                self.snapshot()
            if action == "stop":
                return True
        return False

    # ---- hooks: protocaffe.distributed replaces these two on the instance -----------------

    def train_forward(self, last):
        """The train net's blobs for one of the iter_size forwards; ``last`` marks the final one,
        whose backward a distributed wrapper also uses to all-reduce the gradients."""
        return self.net()

    def take_request(self):
        """The action a signal asked for since the last iteration: 'stop', 'snapshot' or None.
        Distributed, every rank takes the same one (agreed at the iteration boundary)."""
        action, self.requested_action = self.requested_action, None
        return action

    def _smooth(self, loss, start_iter):
        """Caffe's UpdateSmoothedLoss: the mean of the last average_loss losses.

        ``loss`` may be a float64 tensor on the device: the sums run there in the same
        double arithmetic as on Python floats, and are read back only for display."""
        n = self.param.average_loss
        if len(self.losses) < n:
            self.losses.append(loss)
            self.smoothed_loss = (self.smoothed_loss * (len(self.losses) - 1) + loss) / len(self.losses)
        else:
            idx = (self.iter - start_iter) % n
            self.smoothed_loss += (loss - self.losses[idx]) / n
            self.losses[idx] = loss

    def _log_outputs(self, kind, net, outputs):
        weights = net.loss_tops()
        index = 0
        for name, value in outputs.items():
            values = np.atleast_1d(np.asarray(value, dtype=np.float64))
            w = weights.get(name, 0.0)
            for v in values.ravel():
                v = float(np.float32(v))
                loss = f" (* {g(w)} = {g(float(np.float32(w * v)))} loss)" if w else ""
                log.info("    %s net output #%d: %s = %s%s", kind, index, name, g(v), loss)
                index += 1

    # ---- the update ---------------------------------------------------------------------

    def learning_rate(self):
        rate, self.current_step = POLICIES[self.param.lr_policy](self.param, self.iter, self.current_step)
        return float(np.float32(rate))

    def apply_update(self):
        """Caffe's ApplyUpdate: rate; clip; then per parameter normalize, regularize, rule; w -= step."""
        p = self.param
        rate = self.learning_rate()
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %s", self.iter, g(rate))
        grads = [lp.tensor.grad if lp.tensor.grad is not None else torch.zeros_like(lp.tensor)
                 for lp in self.params]
        self._clip(grads)
        with torch.no_grad():
            for lp, grad, hist in zip(self.params, grads, self.history):
                if p.iter_size > 1:
                    grad = grad * np.float32(1.0 / p.iter_size)
                grad = regularize(grad, lp.tensor, np.float32(p.weight_decay * lp.decay_mult),
                                  p.regularization_type)
                local_rate = float(np.float32(rate * lp.lr_mult))
                lp.tensor.sub_(self.rule(grad, hist, local_rate, p, self.iter))

    def _clip(self, grads):
        limit = self.param.clip_gradients
        if limit < 0:
            return
        norm = math.sqrt(sum(float((gr.double() ** 2).sum()) for gr in grads))
        if norm > limit:
            factor = limit / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     g(norm), g(limit), g(factor))
            for gr in grads:
                gr.mul_(np.float32(factor))

    # ---- testing --------------------------------------------------------------------------

    def test_all(self):
        results = [self.test(i) for i in range(len(self.test_nets))]
        if self.param.lr_policy == "plateau" and results:
            self._observe_plateau(results[0])
        return results

    def _observe_plateau(self, outputs):
        name = self.param.plateau_output
        if name not in outputs:
            raise CaffeError(f"plateau_output '{name}' is not an output of test net 0; "
                             f"outputs: {', '.join(outputs)}")
        value = float(np.ravel(outputs[name])[0])
        higher_is_better = name not in self.test_nets[0].loss_tops()
        before = self.current_step
        self.plateau_best, self.plateau_wait, self.current_step = plateau_observe(
            self.param, value, higher_is_better, self.plateau_best, self.plateau_wait, self.current_step)
        if self.current_step != before:
            log.info("Plateau Status: Iteration %d, %s has not improved on %s for %d test rounds, "
                     "step = %d", self.iter, name, g(self.plateau_best), self.param.plateau_patience,
                     self.current_step)

    def test(self, i):
        """Run test net i for test_iter batches; log and return each output's score: its
        average, or with the SSD fork's eval_type "detection" its mean average precision."""
        log.info("Iteration %d, Testing net (#%d)", self.iter, i)
        net, iters = self.test_nets[i], self.param.test_iter[i]
        score, loss = SCORES[schema.get(self.param, "eval_type")](self.param, iters), 0.0
        with torch.no_grad(), self.speed.autocast(self.device):
            for _ in range(iters):
                blobs = net()
                if self.param.test_compute_loss:
                    loss += float(net.loss(blobs))
                score.add({n: blobs[n].detach().double().cpu().numpy() for n in net.output_names})
        if self.param.test_compute_loss:
            log.info("Test loss: %s", g(loss / iters))
        means = score.result()
        self._log_outputs("Test", net, means)
        return means

    # ---- snapshots ----------------------------------------------------------------------

    def _prefix(self):
        p = self.param
        if not p.snapshot_prefix:
            raise CaffeError("snapshot_prefix must be set in the solver to write snapshots")
        return f"{p.snapshot_prefix}_iter_{self.iter}"

    def snapshot(self):
        """Write <prefix>_iter_N.caffemodel and .solverstate (binary protos, as Caffe)."""
        if self.param.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
            raise CaffeError("only snapshot_format: BINARYPROTO is supported (HDF5 is not)")
        model = self._prefix() + ".caffemodel"
        log.info("Snapshotting to binary proto file %s", model)
        self.net.save(model, write_diff=self.param.snapshot_diff)
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=model, current_step=self.current_step)
        if self.plateau_best is not None:
            state.plateau_best, state.plateau_wait = self.plateau_best, self.plateau_wait
        for group in range(max(len(h) for h in self.history) if self.history else 0):
            for hist in self.history:
                fileio.array_to_blob(hist[group].detach().cpu().numpy(), blob=state.history.add())
        path = self._prefix() + ".solverstate"
        log.info("Snapshotting solver state to binary proto file %s", path)
        fileio.write_binary(state, path)
        return model, path

    def restore(self, path):
        """Resume from a .solverstate (protocaffe's or Caffe's): iteration, weights, history."""
        state = fileio.read_binary(path, caffe_pb2.SolverState)
        _check_is_solverstate(state, path)
        n, groups = len(self.history), len(self.history[0]) if self.history else 0
        if len(state.history) != n * groups:
            raise CaffeError(f"{path}: holds {len(state.history)} history blobs; this {self.param.type} "
                             f"solver on this net needs {n * groups}")
        if state.learned_net:
            learned = state.learned_net
            if not os.path.exists(learned):
                beside = os.path.join(os.path.dirname(os.fspath(path)), os.path.basename(learned))
                learned = beside if os.path.exists(beside) else learned
            self.net.copy_from(learned)
        self.iter, self.current_step = state.iter, state.current_step
        if state.HasField("plateau_best"):
            self.plateau_best, self.plateau_wait = state.plateau_best, state.plateau_wait
        for k, blob in enumerate(state.history):
            target = self.history[k % n][k // n]
            data = fileio.blob_to_array(blob)
            if data.size != target.numel():
                raise CaffeError(f"{path}: history blob {k} has {data.size} values, the parameter has "
                                 f"{target.numel()}")
            target.copy_(torch.from_numpy(data.reshape(tuple(target.shape))))

    # ---- signals ---------------------------------------------------------------------------

    def handle_signals(self, sigint_effect="stop", sighup_effect="snapshot"):
        """Caffe's --sigint_effect / --sighup_effect: stop, snapshot or none, after the current iteration."""
        def handler(effect):
            def on_signal(signum, frame):
                if effect != "none":
                    self.requested_action = effect
            return on_signal
        for sig, effect in ((signal.SIGINT, sigint_effect), (signal.SIGHUP, sighup_effect)):
            if effect not in ("stop", "snapshot", "none"):
                raise CaffeError(f"signal effect must be stop, snapshot or none; found '{effect}'")
            signal.signal(sig, handler(effect))


def _check_is_solverstate(state, path):
    """A SolverState carries no field outside the schema; a .caffemodel read as one does."""
    if not len(unknown_fields.UnknownFieldSet(state)):
        return
    try:
        net = fileio.read_binary(path, caffe_pb2.NetParameter)
    except CaffeError:
        net = caffe_pb2.NetParameter()
    if len(net.layer) or len(net.layers):
        raise CaffeError(f"{path}: this is a .caffemodel (net weights, {len(net.layer) or len(net.layers)} "
                         "layers), not a .solverstate; to start from these weights use --weights")
    raise CaffeError(f"{path}: not a .solverstate (it holds fields a SolverState does not have)")


def share_trained_layers(test_net, train_net):
    """Caffe's ShareTrainedLayersWith: test-net layers use the train net's tensors, by layer name."""
    source = train_net.layer_by_name()
    for name, layer in test_net.layer_by_name().items():
        if name in source:
            for blob in layer.blob_names:
                theirs = getattr(source[name], blob)
                if tuple(theirs.shape) != tuple(getattr(layer, blob).shape):
                    raise CaffeError(f"layer '{name}': parameter {blob} has shape {tuple(theirs.shape)} in "
                                     f"the train net but {tuple(getattr(layer, blob).shape)} in a test net")
                setattr(layer, blob, theirs)
