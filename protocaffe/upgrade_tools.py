"""Caffe's upgrade tools: ``protocaffe upgrade_net_proto_text IN OUT``,
``upgrade_net_proto_binary [--dialect FORK] IN OUT`` and ``upgrade_solver_proto_text IN OUT``.

A binary net is read as protocaffe.dialects reads forks' files: fields a fork numbered where
BVLC has others move to protocaffe's numbers (``--dialect`` names the fork whose numbers
collide with BVLC's on the wire alone, e.g. DenseNet-Caffe's ceil_mode), and a fork's
meanings become BVLC's (ceil_mode is written as round_mode).

As in Caffe, a file already in the latest format is written out unchanged
(with a warning). Unlike Caffe, a file that cannot be upgraded cleanly writes
nothing: the error names the file and layer, and the command exits 1.
"""
from protocaffe import dialects, fileio
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log, setup
from protocaffe.proto import caffe_pb2
from protocaffe.upgrade import net_needs_upgrade, solver_needs_type_upgrade, upgrade_net, upgrade_solver


_WHAT = {"upgrade_net_proto_text": "a net prototxt (V0/V1 layers, old fields)",
         "upgrade_net_proto_binary": "a binary net (.caffemodel, V0/V1 layers)",
         "upgrade_solver_proto_text": "a solver prototxt (solver_type -> type)"}


def _paths(name, argv, dialect=False):
    f = Flags(name, f"Upgrade {_WHAT[name]} to the current format.",
              [("IN", "the file to upgrade"), ("OUT", "where to write the upgraded file")],
              usage="%(prog)s [--dialect FORK] IN OUT" if dialect else "%(prog)s IN OUT")
    if dialect:
        f.flag("dialect", "", f"the fork whose field numbers the file uses ({', '.join(dialects.DIALECTS)})")
    args = f.parse(argv)
    setup()
    return args.IN, args.OUT, getattr(args, "dialect", "") or None


def _upgrade_file(src, dst, message_type, binary, needs, upgrade, dialect=None):
    if binary:
        param, write = dialects.read_binary(src, message_type, dialect), fileio.write_binary
    else:
        param, write = fileio.read_text(src, message_type), fileio.write_text
    if needs(param):
        param = upgrade(param, src)
    else:
        log.warning("%s is already in the latest format; writing it unchanged", src)
    write(param, dst)
    log.info("Wrote upgraded %s %s proto to %s", message_type.DESCRIPTOR.name,
             "binary" if binary else "text", dst)
    return 0


def run_upgrade_net_proto_text(argv):
    src, dst, _ = _paths("upgrade_net_proto_text", argv)
    return _upgrade_file(src, dst, caffe_pb2.NetParameter, False, net_needs_upgrade, upgrade_net)


def run_upgrade_net_proto_binary(argv):
    src, dst, dialect = _paths("upgrade_net_proto_binary", argv, dialect=True)
    return _upgrade_file(src, dst, caffe_pb2.NetParameter, True, net_needs_upgrade, upgrade_net, dialect)


def run_upgrade_solver_proto_text(argv):
    src, dst, _ = _paths("upgrade_solver_proto_text", argv)
    return _upgrade_file(src, dst, caffe_pb2.SolverParameter, False, solver_needs_type_upgrade,
                         upgrade_solver)
