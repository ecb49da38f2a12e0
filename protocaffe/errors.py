"""The one exception type for mistakes a user can make.

Anything a user can cause (a malformed prototxt, a missing file, weights of the
wrong shape, an unknown layer type) raises :class:`CaffeError` with a message
that names the file, line or layer, what was expected and what was found. The
command line prints that message on one line and exits non-zero; anything
else that escapes is a bug in protocaffe and keeps its traceback.
"""


class CaffeError(Exception):
    """A user-facing error: the message is complete and needs no traceback."""
