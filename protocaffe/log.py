"""Logging in glog's classic format, so Caffe's log tools (parse_log.py, plot_training_log.py)
read protocaffe's logs as they read Caffe's:

    I1124 21:12:47.831710 12345 solver.py:210] Iteration 20 (5.1 iter/s, 3.9s/20 iters), loss = 0.69

Messages go to stderr, and with ``log_dir`` also to a file named as glog names it.
"""
import getpass
import logging
import os
import socket
import sys
import time

from tqdm import tqdm

LOGGER = logging.getLogger("protocaffe")
_LEVELS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
           logging.CRITICAL: "F"}


class GlogFormatter(logging.Formatter):
    def format(self, record):
        t = time.localtime(record.created)
        micros = int((record.created % 1) * 1e6)
        prefix = (f"{_LEVELS.get(record.levelno, 'I')}{t.tm_mon:02d}{t.tm_mday:02d} "
                  f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} {record.process:5d} "
                  f"{record.filename}:{record.lineno}] ")
        return prefix + record.getMessage()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, as test runners do),
    through tqdm.write: active progress bars are cleared, the line written, the bars redrawn."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's own policy: report through handleError, never raise
            self.handleError(record)


def setup(log_dir=None, program="protocaffe"):
    """Send protocaffe's log to stderr (and a glog-named file in ``log_dir``); returns the file path."""
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    for handler in list(LOGGER.handlers):
        LOGGER.removeHandler(handler)
        handler.close()
    handlers = [_StderrHandler()]
    path = None
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = os.path.join(log_dir, f"{program}.{socket.gethostname()}.{getpass.getuser()}"
                                     f".log.INFO.{stamp}.{os.getpid()}")
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        handler.setFormatter(GlogFormatter())
        LOGGER.addHandler(handler)
    return path


def g(x):
    """A number as C++'s default ostream prints it (6 significant digits)."""
    return f"{x:.6g}"
