"""Caffe's upgrade tools: ``upgrade_net_proto_text``, ``upgrade_net_proto_binary``,
``upgrade_solver_proto_text`` (``protocaffe <tool> IN OUT``)."""
from protocaffe import io
from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log, setup
from protocaffe.proto import caffe_pb2
from protocaffe.upgrade import upgrade_net, upgrade_solver


def _paths(name, argv):
    if len(argv) != 2 or any(a.startswith("-") for a in argv):
        raise CaffeError(f"usage: protocaffe {name} IN OUT")
    setup()
    return argv


def run_upgrade_net_proto_text(argv):
    src, dst = _paths("upgrade_net_proto_text", argv)
    io.write_text(upgrade_net(io.read_text(src, caffe_pb2.NetParameter), src), dst)
    log.info("Wrote upgraded NetParameter text proto to %s", dst)
    return 0


def run_upgrade_net_proto_binary(argv):
    src, dst = _paths("upgrade_net_proto_binary", argv)
    io.write_binary(upgrade_net(io.read_binary(src, caffe_pb2.NetParameter), src), dst)
    log.info("Wrote upgraded NetParameter binary proto to %s", dst)
    return 0


def run_upgrade_solver_proto_text(argv):
    src, dst = _paths("upgrade_solver_proto_text", argv)
    io.write_text(upgrade_solver(io.read_text(src, caffe_pb2.SolverParameter), src), dst)
    log.info("Wrote upgraded SolverParameter text proto to %s", dst)
    return 0
