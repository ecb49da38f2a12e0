"""Batches made off the training thread, or in it.

:class:`WorkerPool` forks worker processes that fill batches into shared
memory. Batch ``k`` is made by worker ``k % workers`` into a free slot; at most
``depth`` batches are ready or in the making (the bounded queue). The consumer
takes batches in order. A finished batch is lent as a tensor over its slot
(no copy), and the slot is reused once nothing refers to that memory any more;
when the loop holds on to so many batches that the next one would have no
slot, the batch is copied out instead. Slots are anonymous shared mappings
made before the fork, so /dev/shm's size does not limit them. Workers are
daemons, watch for their parent's exit, and are stopped when the pool is
closed or garbage collected.

:class:`Synchronous` makes each batch when asked, in the calling thread.
Both give ``(payload, tensor)``: what ``fill`` returned, and the batch as a CPU
tensor that stays as it is for as long as the caller keeps it (a pinned copy
if asked, for fast copies to a GPU).
"""
import collections
import mmap
import multiprocessing
import os
import signal
import traceback
import weakref
from multiprocessing.connection import wait

import cv2
import numpy as np
import torch

from protocaffe.errors import CaffeError

WORKERS_VARIABLE = "PROTOCAFFE_DATA_WORKERS"
SPARE_SLOTS = 2
"""Slots beyond the prefetch depth, so that the batches a training loop still holds are lent, not copied."""


def default_workers():
    """Worker processes per data layer: $PROTOCAFFE_DATA_WORKERS, else one per core but one, up to 4.

    0 makes batches in the training thread (no processes), as on systems without fork."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    value = os.environ.get(WORKERS_VARIABLE)
    if value is not None:
        try:
            return max(0, int(value))
        except ValueError:
            raise CaffeError(f"${WORKERS_VARIABLE} must be a number of processes, found '{value}'") from None
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _owned(array, pin):
    tensor = torch.from_numpy(array)
    return tensor.pin_memory() if pin else tensor.clone()


class Synchronous:
    """Makes batch ``start``, ``start + 1``, ... in the calling thread, one per :meth:`get`."""

    def __init__(self, fill, shape, dtype, start):
        self.fill, self.shape, self.dtype, self.next = fill, shape, dtype, start

    def get(self, pin=False):
        out = np.empty(self.shape, self.dtype)
        payload = self.fill(self.next, out)
        self.next += 1
        tensor = torch.from_numpy(out)
        return payload, tensor.pin_memory() if pin else tensor

    def close(self):
        pass


def _work(fill, slots, tasks, results, parent):
    """A worker's loop: fill the slot of each task until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    cv2.setNumThreads(1)
    while True:
        while not tasks.poll(1.0):
            if os.getppid() != parent:
                return
        try:
            task = tasks.recv()
        except EOFError:
            return
        if task is None:
            return
        k, slot = task
        try:
            payload = fill(k, slots[slot])
        except CaffeError as e:
            payload = e
        except Exception:
            payload = RuntimeError(f"data worker failed on batch {k}:\n{traceback.format_exc()}")
        try:
            results.send((k, payload))
        except OSError:
            return


def _shutdown(procs, tasks, results):
    for conn in tasks:
        try:
            conn.send(None)
        except OSError:
            pass
    for p in procs:
        p.join(timeout=0.5)
        if p.is_alive():
            p.terminate()
            p.join()
    for conn in tasks + results:
        conn.close()


def _stop_opencv_threads():
    """Let OpenCV's thread pool go before a fork (it starts again at the next parallel call): a
    child inherits the pool's locks but not its threads, and once they sleep in the parent the
    child's cv2.setNumThreads waits for them forever."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    cv2.setNumThreads(threads)


class WorkerPool:
    """``workers`` forked processes making batches ``start``, ``start + 1``, ... ahead of :meth:`get`."""

    def __init__(self, fill, shape, dtype, start, workers, depth):
        context = multiprocessing.get_context("fork")
        _stop_opencv_threads()
        size, dtype = int(np.prod(shape)), np.dtype(dtype)
        self.depth = max(depth, workers)
        self.slots = [np.frombuffer(mmap.mmap(-1, max(1, size * dtype.itemsize)), dtype, size).reshape(shape)
                      for _ in range(self.depth + SPARE_SLOTS)]
        self.procs, self.tasks, self.results = [], [], []
        for w in range(workers):
            task_out, task_in = context.Pipe(duplex=False)
            result_out, result_in = context.Pipe(duplex=False)
            proc = context.Process(target=_work, name=f"protocaffe-data-{w}", daemon=True,
                                   args=(fill, self.slots, task_out, result_in, os.getpid()))
            proc.start()
            task_out.close()
            result_in.close()
            self.procs.append(proc)
            self.tasks.append(task_in)
            self.results.append(result_out)
        self._close = weakref.finalize(self, _shutdown, self.procs, self.tasks, self.results)
        self.free = list(range(len(self.slots)))
        self.returned = collections.deque()  # slots whose lent batch was freed (from any thread)
        self.in_flight = {}                  # batch index -> slot
        self.next = self.asked = start
        self._ask_ahead()

    def _ask_ahead(self):
        while self.returned:
            self.free.append(self.returned.popleft())
        while len(self.in_flight) < self.depth and self.free:
            k, slot = self.asked, self.free.pop()
            self.in_flight[k] = slot
            self.asked += 1
            try:
                self.tasks[k % len(self.procs)].send((k, slot))
            except OSError:  # the worker is gone; get() reports it when its batch is due
                pass

    def get(self, pin=False):
        self._ask_ahead()
        k = self.next
        w = k % len(self.procs)
        conn, proc = self.results[w], self.procs[w]
        while True:
            wait([conn, proc.sentinel])
            try:
                if conn.poll():
                    done, payload = conn.recv()
                    break
            except EOFError:
                pass
            if not proc.is_alive():
                self.close()
                raise RuntimeError(f"data worker {w} stopped (exit code {proc.exitcode}) before batch {k}")
        assert done == k, f"worker {w} sent batch {done}, expected {k}"
        if isinstance(payload, BaseException):
            self.close()
            raise payload
        slot = self.in_flight.pop(k)
        self.next += 1
        if pin or not (self.free or self.returned or k + 1 in self.in_flight):
            tensor = _owned(self.slots[slot], pin)
            self.free.append(slot)
        else:
            tensor = self._lend(slot)
        self._ask_ahead()
        return payload, tensor

    def _lend(self, slot):
        """The slot itself as a tensor; the slot is reused once no tensor refers to its memory."""
        view = self.slots[slot].view()  # the tensor's storage keeps this very array alive
        weakref.finalize(view, self.returned.append, slot)
        return torch.from_numpy(view)

    def close(self):
        """Stop the workers (idempotent)."""
        self._close()
