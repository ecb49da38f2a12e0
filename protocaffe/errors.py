"""The one exception type for mistakes a user can make.

Anything a user can cause (a malformed prototxt, a missing file, weights of the
wrong shape, an unknown layer type) raises :class:`CaffeError` with a message
that names the file, line or layer, what was expected and what was found. The
command line prints that message on one line and exits non-zero; anything
else that escapes is a bug in protocaffe and keeps its traceback.
"""
import difflib


class CaffeError(Exception):
    """A user-facing error: the message is complete and needs no traceback."""


class MissingExtraError(CaffeError, ImportError):
    """An optional package (an extra, such as ``onnx``) is not installed. A CaffeError, so the
    command line prints its one line; an ImportError, so ``try: import ... except ImportError``
    and package walkers (pkgutil.walk_packages) treat the module as any optional one."""


def did_you_mean(word, choices):
    """`` (did you mean 'x'?)`` naming the closest of ``choices`` to ``word``, or ''.

    A match ignoring case wins (``Relu`` -> ``ReLU``); otherwise difflib's closest.
    """
    lower = {c.lower(): c for c in choices}
    close = [lower[word.lower()]] if word.lower() in lower else \
        difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
