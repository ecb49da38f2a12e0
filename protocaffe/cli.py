"""``protocaffe COMMAND [flags]``: Caffe's command-line tools under one entry point.

Each command lives in its own module as ``run(argv) -> int``; this file only
dispatches, and turns a :class:`CaffeError` into one line on stderr and exit
code 1 (no traceback). Flags follow Caffe's gflags spellings: ``-solver x``,
``--solver x`` and ``--solver=x`` all work.
"""
import importlib
import sys

from protocaffe.errors import CaffeError

COMMANDS = {
    # caffe's own subcommands
    "train": "protocaffe.commands.train",
    "test": "protocaffe.commands.test",
    "time": "protocaffe.commands.time",
    "device_query": "protocaffe.commands.device_query",
    # caffe's tools
    "convert_imageset": "protocaffe.data.convert_imageset",
    "compute_image_mean": "protocaffe.data.compute_image_mean",
    "compute_pca": "protocaffe.data.pca",
    "make_shapes": "protocaffe.datasets.shapes",
    "export_onnx": "protocaffe.commands.export_onnx",
    "upgrade_net_proto_text": "protocaffe.upgrade_tools",
    "upgrade_net_proto_binary": "protocaffe.upgrade_tools",
    "upgrade_solver_proto_text": "protocaffe.upgrade_tools",
    # pycaffe's tools
    "classify": "protocaffe.commands.classify",
    "draw_net": "protocaffe.commands.draw_net",
    "parse_log": "protocaffe.commands.parse_log",
    "plot_training_log": "protocaffe.commands.plot_training_log",
    "extract_features": "protocaffe.commands.extract_features",
}

USAGE = "usage: protocaffe <command> [args]\n\ncommands:\n" + "".join(
    f"  {name}\n" for name in COMMANDS)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"protocaffe: unknown command '{name}'\n{USAGE}", end="", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    run = getattr(module, "run_" + name, None) or module.run
    try:
        return run(rest) or 0
    except CaffeError as e:
        print(f"protocaffe {name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"protocaffe {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
