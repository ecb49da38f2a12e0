"""Caffe's forks as dialects of one language, recognised once, where files are read.

A fork (SSD, DenseNet-Caffe, SegNet, ...) added fields to Caffe's messages and layer types
to its factory. Here each fork is one module in this package holding its facts: the
``.proto`` file with its fields (``proto/forks/<fork>.proto``, extensions at the fork's own
numbers), the layer types only it has, how its files are recognised, where its numbers or
meanings collide with BVLC Caffe's and how those are brought to BVLC's meaning. Like
Caffe's own format upgrades (protocaffe.upgrade), a dialect is applied at the edge:

    param = fileio.read_text(path, caffe_pb2.NetParameter)   # forks' fields by name
    param = dialects.recognise(param, path)                  # name the fork, convert its meanings

and everything after sees one net description. Binary files of a fork whose numbers collide
with BVLC's are renumbered before they are parsed (``read_binary(..., dialect=...)``).
"""
import logging
import os
from dataclasses import dataclass, field

from protocaffe import fileio
from protocaffe.dialects import wire
from protocaffe.errors import CaffeError, did_you_mean

log = logging.getLogger("protocaffe")


@dataclass(frozen=True)
class Dialect:
    """One fork of Caffe as a dialect.

    ``key`` names it on the command line (``--dialect ssd``); ``name`` in the log.
    ``proto_files`` are the schema files of its fields (their extensions mark its files);
    ``fields`` names of fields, set anywhere in a file, that only this fork writes (for fields
    several forks share one extension of, ``bn_mode`` tells SegNet's ``bn_param``);
    ``layer_types`` the types only it defines; ``moves`` the binary renumbering of its
    colliding fields (see :func:`protocaffe.dialects.wire.renumber`: rules scoped to a message
    apply with ``--dialect`` only, rules scoped to a layer type BVLC lacks apply to every
    binary file); ``convert(param, source)`` turns what the fork means differently into
    BVLC's fields and returns the message (the default keeps it as it is).
    """
    key: str
    name: str
    proto_files: tuple = ()
    fields: frozenset = frozenset()
    layer_types: frozenset = frozenset()
    moves: dict = field(default_factory=dict)
    convert: object = None


DIALECTS = {}
"""key -> Dialect, in registration order."""


def register(dialect):
    if dialect.key in DIALECTS:
        raise ValueError(f"dialect {dialect.key!r} registered twice")
    DIALECTS[dialect.key] = dialect
    return dialect


def by_key(key):
    """The dialect named ``key`` (as ``--dialect`` takes it), or a CaffeError listing the known ones."""
    if key not in DIALECTS:
        raise CaffeError(f"unknown dialect '{key}'{did_you_mean(key, DIALECTS)}; "
                         f"known: {', '.join(DIALECTS)}")
    return DIALECTS[key]


def _marks(message, found):
    """Collect (proto file of an extension or None, bare field name) of every field set
    anywhere in ``message``."""
    for f, value in message.ListFields():
        found.add((f.file.name if f.is_extension else None, f.name))
        if f.message_type is not None:
            for item in (value if f.is_repeated else (value,)):
                _marks(item, found)
    return found


def layers_of(message):
    """The layers of a NetParameter (``layer`` and V1 ``layers``), a LayerParameter itself,
    nothing for other messages: what a dialect's ``convert`` walks."""
    if message.DESCRIPTOR.full_name == "caffe.LayerParameter":
        return [message]
    return [layer for name in ("layer", "layers") if name in message.DESCRIPTOR.fields_by_name
            for layer in getattr(message, name)]


def _layer_types(message):
    return {layer.type for layer in layers_of(message) if isinstance(layer.type, str)}


def find(message):
    """[(dialect, evidence)] for every dialect ``message`` is written in; evidence names the
    fork's fields and layer types found."""
    fields = _marks(message, set())
    types = _layer_types(message)
    found = []
    for dialect in DIALECTS.values():
        evidence = sorted({name for file, name in fields
                           if file in dialect.proto_files or name in dialect.fields})
        evidence += [f"type {t}" for t in sorted(types & dialect.layer_types)]
        if evidence:
            found.append((dialect, evidence))
    return found


def recognise(message, source):
    """Name in the log each fork ``message`` (a NetParameter or SolverParameter read from
    ``source``) is written in, and bring the fork's meanings to BVLC's; returns the message."""
    for dialect, evidence in find(message):
        shown = ", ".join(evidence[:4]) + (", ..." if len(evidence) > 4 else "")
        log.info("Reading %s as %s (%s)", source, dialect.name, shown)
        if dialect.convert is not None:
            message = dialect.convert(message, source)
    return message


def layer_type_moves():
    """Every dialect's renumbering rules scoped to a layer type: safe on any file."""
    moves = {}
    for d in DIALECTS.values():
        for scope, rules in d.moves.items():
            if isinstance(scope, tuple):
                moves.setdefault(scope, {}).update(rules)
    return moves


def read_binary(path, message_type, dialect=None):
    """A binary proto file, its forks' fields moved from colliding numbers to protocaffe's:
    those scoped to a layer type always, those scoped to a message with ``dialect`` (a key)
    only; then recognised as a text file is."""
    moves = layer_type_moves()
    if dialect is not None:
        moves.update(by_key(dialect).moves)
    data = fileio._read_bytes(path)
    if moves:
        try:
            data = wire.renumber(data, message_type.DESCRIPTOR, moves)
        except CaffeError as e:
            raise CaffeError(f"{os.fspath(path)}: not a valid binary {message_type.DESCRIPTOR.name} ({e})") from None
    return recognise(fileio.parse_binary(data, message_type, os.fspath(path)), os.fspath(path))


# importing the dialect modules registers them
from protocaffe.dialects import ssd, densenet, segnet, pspnet, mobilenet, shufflenet, senet  # noqa: E402,F401
from protocaffe.dialects import faster_rcnn, rfcn, yolo, sphereface, caffe_face  # noqa: E402,F401
