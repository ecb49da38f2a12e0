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
            self.parser.add_argument(f"-{name}", f"--{name}", dest=name, nargs="?", const=True,
                                     default=default, type=_bool, help=help_)
        else:
            self.parser.add_argument(f"-{name}", f"--{name}", dest=name, default=default, type=kind,
                                     help=help_)
        return self

    def parse(self, argv):
        argv = list(argv)
        for i, arg in enumerate(argv):
            bare = arg.lstrip("-")
            if arg.startswith("-") and bare.startswith("no") and bare[2:] in self._bools:
                argv[i] = f"--{bare[2:]}=false"
        return self.parser.parse_args(argv)
