"""Command-line flags in Caffe's gflags spellings: ``-name v``, ``--name v``, ``--name=v``,
and for booleans ``--name``, ``--name=false``, ``-noname`` / ``--noname``. ``--help`` shows each
flag with its default, as gflags' ``--help`` does; no abbreviated flag names (gflags has none)."""
import argparse

from protocaffe.errors import CaffeError, did_you_mean


def _bool(text):
    value = str(text).lower()
    if value in ("1", "true", "yes", "y", "t"):
        return True
    if value in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, found '{text}'")


def _with_default(help_, default):
    """The help text and the default as gflags shows it (``default: ""``, ``default: false``)."""
    shown = str(default).lower() if isinstance(default, bool) else \
        (f'"{default}"' if isinstance(default, str) or default is None else str(default))
    return f"{help_} (default: {shown})".replace("%", "%%")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            word = message.split()[2].lstrip("-").partition("=")[0]
            names = [o.lstrip("-") for a in self._actions for o in a.option_strings]
            message += did_you_mean(word, names).replace("'", "'--", 1)
        usage = f"; {' '.join(self.format_usage().split())}" if self.usage else ""
        raise CaffeError(f"{message}{usage} ('{self.prog} --help' lists the flags)")


class Flags:
    """A small gflags-like parser: ``flag(name, default, help)`` then ``parse(argv)``."""

    def __init__(self, prog, description, positionals=(), usage=None):
        self.parser = _Parser(prog=f"protocaffe {prog}", description=description, usage=usage,
                              allow_abbrev=False)
        self._bools = []
        for name, help_ in positionals:
            self.parser.add_argument(name, help=help_)

    def flag(self, name, default, help_):
        kind = type(default) if default is not None else str
        if kind is bool:
            self._bools.append(name)
            self.parser.add_argument(f"-{name}", f"--{name}", dest=name, action="store_true",
                                     default=default, help=_with_default(help_, default))
            self.parser.add_argument(f"-no{name}", f"--no{name}", dest=name, action="store_false",
                                     help=argparse.SUPPRESS)
        else:
            self.parser.add_argument(f"-{name}", f"--{name}", dest=name, default=default, type=kind,
                                     metavar=kind.__name__.upper(), help=_with_default(help_, default))
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
