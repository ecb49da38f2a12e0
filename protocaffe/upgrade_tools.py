"""Caffe's upgrade tools: ``protocaffe upgrade_net_proto_text IN OUT``,
``upgrade_net_proto_binary IN OUT`` and ``upgrade_solver_proto_text IN OUT``.

As in Caffe, a file already in the latest format is written out unchanged
(with a warning). Unlike Caffe, a file that cannot be upgraded cleanly writes
nothing: the error names the file and layer, and the command exits 1.
"""
from protocaffe import fileio
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log, setup
from protocaffe.proto import caffe_pb2
from protocaffe.upgrade import net_needs_upgrade, solver_needs_type_upgrade, upgrade_net, upgrade_solver


_WHAT = {"upgrade_net_proto_text": "a net prototxt (V0/V1 layers, old fields)",
         "upgrade_net_proto_binary": "a binary net (.caffemodel, V0/V1 layers)",
         "upgrade_solver_proto_text": "a solver prototxt (solver_type -> type)"}


def _paths(name, argv):
    f = Flags(name, f"Upgrade {_WHAT[name]} to the current format.",
              [("IN", "the file to upgrade"), ("OUT", "where to write the upgraded file")],
              usage="%(prog)s IN OUT")
    args = f.parse(argv)
    setup()
    return args.IN, args.OUT


def _upgrade_file(src, dst, message_type, binary, needs, upgrade):
    read, write = (fileio.read_binary, fileio.write_binary) if binary else (fileio.read_text, fileio.write_text)
    param = read(src, message_type)
    if needs(param):
        param = upgrade(param, src)
    else:
        log.warning("%s is already in the latest format; writing it unchanged", src)
    write(param, dst)
    log.info("Wrote upgraded %s %s proto to %s", message_type.DESCRIPTOR.name,
             "binary" if binary else "text", dst)
    return 0


def run_upgrade_net_proto_text(argv):
    src, dst = _paths("upgrade_net_proto_text", argv)
    return _upgrade_file(src, dst, caffe_pb2.NetParameter, False, net_needs_upgrade, upgrade_net)


def run_upgrade_net_proto_binary(argv):
    src, dst = _paths("upgrade_net_proto_binary", argv)
    return _upgrade_file(src, dst, caffe_pb2.NetParameter, True, net_needs_upgrade, upgrade_net)


def run_upgrade_solver_proto_text(argv):
    src, dst = _paths("upgrade_solver_proto_text", argv)
    return _upgrade_file(src, dst, caffe_pb2.SolverParameter, False, solver_needs_type_upgrade,
                         upgrade_solver)
