"""Command-line flags in Caffe's gflags spellings: ``-name v``, ``--name v``, ``--name=v``,
and for booleans ``--name``, ``--name=false``, ``--noname``."""
import argparse

from protocaffe.errors import CaffeError


def _bool(text):
    value = str(text).lower()
    if value in ("1", "true", "yes", "y", "t"):
        return True
    if value in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, found '{text}'")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CaffeError(f"{message}\n{self.format_usage().strip()}")


class Flags:
    """A small gflags-like parser: ``flag(name, default, help)`` then ``parse(argv)``."""

    def __init__(self, prog, description, positionals=()):
        self.parser = _Parser(prog=f"protocaffe {prog}", description=description)
        self._bools = []
        for name, help_ in positionals:
            self.parser.add_argument(name, help=help_)

    def flag(self, name, default, help_):
        kind = type(default) if default is not None else str
        if kind is bool:
            self._bools.append(name)
            self.parser.add_argument(f"-{name}", f"--{name}", dest=name, action="store_true",
                                     default=default, help=help_)
            self.parser.add_argument(f"--no{name}", dest=name, action="store_false", help=argparse.SUPPRESS)
        else:
            self.parser.add_argument(f"-{name}", f"--{name}", dest=name, default=default, type=kind,
                                     help=help_)
        return self

    def parse(self, argv):
        """A boolean never takes the next word (as in gflags); ``--x=true``/``--x=false`` set it."""
        argv = list(argv)
        for i, arg in enumerate(argv):
            name, eq, value = arg.lstrip("-").partition("=")
            if arg.startswith("-") and eq and name in self._bools:
                try:
                    argv[i] = f"--{name}" if _bool(value) else f"--no{name}"
                except argparse.ArgumentTypeError as e:
                    raise CaffeError(f"--{name}: {e}") from None
        return self.parser.parse_args(argv)
