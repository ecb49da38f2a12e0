"""A background producer feeding a bounded queue: reading and decoding stay off the
training thread. LMDB reads, image decoding and numpy copies release the GIL."""
import queue
import threading
import weakref


def _loop(produce, out, stop):
    try:
        while not stop.is_set():
            item = produce()
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
    except BaseException as e:  # handed to the consumer, which raises it
        out.put(e)


class Prefetcher:
    """Calls ``produce()`` in a daemon thread, keeping up to ``depth`` results ready."""

    def __init__(self, produce, depth):
        self.queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=_loop, args=(produce, self.queue, self.stop), daemon=True)
        self.thread.start()
        self._finalizer = weakref.finalize(self, self.stop.set)

    def get(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self):
        self.stop.set()
