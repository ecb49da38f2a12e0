"""``protocaffe COMMAND [flags]``: Caffe's command-line tools under one entry point.

Each command lives in its own module as ``run(argv) -> int``; this file only
dispatches and guards. Flags follow Caffe's gflags spellings: ``-solver x``,
``--solver x`` and ``--solver=x`` all work. Global flags, accepted anywhere:
``--help``, ``--version``, ``--debug`` (show the traceback of any failure) and
``--no_python_layers`` (refuse nets whose Python layers would import code).

The guard: a :class:`CaffeError` becomes one line ``protocaffe CMD: error: ...``
and exit 1; any other exception (a bug in protocaffe) becomes one line naming it
with a hint to rerun with ``--debug``, also exit 1.
"""
import contextlib
import importlib
import os
import sys
import traceback

from protocaffe._version import CAFFE_VERSION, VERSION
from protocaffe.errors import CaffeError, did_you_mean
from protocaffe.layer_types import loss as loss_layers
from protocaffe.layer_types.python import NO_PYTHON_LAYERS

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
    "make_shapes": "protocaffe.datasets.make_shapes",
    # the SSD fork's tools
    "convert_annoset": "protocaffe.data.annotated.convert_annoset",
    "create_label_map": "protocaffe.data.annotated.create_label_map",
    "get_image_size": "protocaffe.data.annotated.get_image_size",
    "detect": "protocaffe.commands.detect",
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

# one line per command for ``protocaffe --help`` (a command missing here shows its module's first line)
DESCRIPTIONS = {
    "train": "train or finetune a model from a solver (Caffe's caffe train)",
    "test": "score a model on its test data (caffe test)",
    "time": "benchmark each layer's forward and backward (caffe time)",
    "device_query": "show the CPU and CUDA devices, or one GPU's details (caffe device_query)",
    "convert_imageset": "convert a list of images and labels into an LMDB of Datum records",
    "compute_image_mean": "compute the mean image of an LMDB into a .binaryproto",
    "compute_pca": "compute the colour PCA of an LMDB (AlexNet's lighting augmentation)",
    "make_shapes": "draw the built-in shapes dataset (examples/shapes)",
    "convert_annoset": "convert images and box annotations into an LMDB of AnnotatedDatum (SSD)",
    "create_label_map": "write a LabelMap prototxt from a list of class names (SSD)",
    "get_image_size": "list the height and width of each image of a list (SSD)",
    "detect": "detect objects in images with an SSD net, boxes as text or drawn (SSD's ssd_detect)",
    "upgrade_net_proto_text": "upgrade a V0/V1 net prototxt to the current format",
    "upgrade_net_proto_binary": "upgrade a V0/V1 .caffemodel to the current format",
    "upgrade_solver_proto_text": "upgrade a solver prototxt (solver_type -> type)",
    "export_onnx": "write a net and its weights as an ONNX model (needs the onnx extra)",
    "classify": "classify images with a trained net (pycaffe's python/classify.py)",
    "draw_net": "draw a net as a picture through Graphviz (pycaffe's python/draw_net.py)",
    "parse_log": "a training log as .train and .test tables (Caffe's tools/extra/parse_log.py)",
    "plot_training_log": "chart a training log as a PNG (Caffe's tools/extra/plot_training_log.py)",
    "extract_features": "write blobs of a net over its data to LMDBs (Caffe's extract_features)",
}

GLOBAL_FLAGS = ("--debug", "-debug")
NO_PYTHON_FLAGS = ("--no_python_layers", "-no_python_layers")

# data that an example builds in a step of its own: a missing file there gets the step as a hint
DATA_STEPS = {"examples/shapes/data": "bash examples/shapes/train.sh builds it first "
                                      "(its data step: protocaffe make_shapes --out examples/shapes/data)",
              "examples/shapes_ssd/data": "bash examples/shapes_ssd/train.sh builds it first (its data step: "
                                          "protocaffe make_shapes --detection, then convert_annoset)"}


def _description(name):
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    doc = importlib.import_module(COMMANDS[name]).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage():
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {_description(name)}" for name in COMMANDS]
    return ("usage: protocaffe <command> [flags]   (protocaffe <command> --help for its flags)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\nglobal flags:\n"
            "  --help              this message\n"
            "  --version           protocaffe's version and the Caffe release it follows\n"
            "  --debug             show the full traceback of any failure; check labels on the GPU too\n"
            "  --no_python_layers  refuse nets whose Python layers would import code "
            f"(in the API: {NO_PYTHON_LAYERS}=1)\n")


def version():
    """``protocaffe X (Caffe 1.0.0 compatible)``: protocaffe's own version and the Caffe release it follows."""
    return f"protocaffe {VERSION} (Caffe {CAFFE_VERSION} compatible)"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = any(a in GLOBAL_FLAGS for a in argv)
    refuse_python = any(a in NO_PYTHON_FLAGS for a in argv)
    argv = [a for a in argv if a not in GLOBAL_FLAGS + NO_PYTHON_FLAGS]
    if not argv or argv[0] in ("-h", "--help", "-help", "help"):
        if len(argv) > 1 and argv[0] == "help":
            return main(argv[1:2] + ["--help"])
        print(usage(), end="")
        return 0 if argv else 2
    if argv[0] in ("--version", "-version"):
        print(version())
        return 0
    name, rest = argv[0], argv[1:]
    loss_layers.CHECK_DEVICE_LABELS = debug
    if name not in COMMANDS:
        print(f"protocaffe: error: unknown command '{name}'{did_you_mean(name, COMMANDS)}; "
              "'protocaffe --help' lists the commands", file=sys.stderr)
        return 2
    with _environment(NO_PYTHON_LAYERS, "1" if refuse_python else None):
        return _guarded(name, rest, debug)


@contextlib.contextmanager
def _environment(name, value):
    """``name=value`` in the environment while a command runs (and in the processes it starts);
    nothing changes for a None value."""
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if saved is None:
                del os.environ[name]
            else:
                os.environ[name] = saved


def _guarded(name, rest, debug):
    """Run one command; every failure ends as one line on stderr (with ``debug``, the traceback too)."""
    try:
        module = importlib.import_module(COMMANDS[name])
        run = getattr(module, "run_" + name, None) or module.run
        return run(rest) or 0
    except SystemExit as e:  # --help, or argparse's own exit
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print(f"protocaffe {name}: interrupted", file=sys.stderr)
        return 130
    except CaffeError as e:
        if debug:
            traceback.print_exc()
        print(f"protocaffe {name}: error: {_one_line(e)}{_data_hint(str(e))}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug in protocaffe: one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"protocaffe {name}: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


def _data_hint(message):
    for folder, step in DATA_STEPS.items():
        if folder in message and not os.path.isdir(folder):
            return f"; {folder} is missing: {step}"
    return ""


def _one_line(error):
    return " ".join(str(error).splitlines())


if __name__ == "__main__":
    sys.exit(main())
