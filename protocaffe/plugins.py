"""Layer plugins: a fork's layer type added without editing protocaffe.

A plugin is a Python module that, when imported,

1. registers its parameter message, if the layer has one, as an extension of
   ``caffe.LayerParameter`` at the fork's field number: a ``.proto`` file that
   ``import "caffe.proto";`` and ``extend caffe.LayerParameter { ... }``, loaded with
   :func:`load_proto` (which compiles it with grpcio-tools' protoc against protocaffe's own
   schema). Its prototxt then reads the field by its bare name (``reverse_param { axis: 1 }``)
   and its binary files read and write at the fork's number. A module generated ahead of time
   (``python -m grpc_tools.protoc -I<protocaffe>/proto -I. --python_out=. my.proto``) works too:
   its ``import caffe_pb2`` finds protocaffe's schema once this module is imported;
2. registers its layer class with :func:`register_layer`: a subclass of
   :class:`protocaffe.layer_types.Layer` with ``type`` (the prototxt type string), ``setup``,
   ``top_shapes`` and ``forward``; backward comes from autograd, or from a
   ``torch.autograd.Function`` where the fork's gradient is not the derivative of its
   forward. The layer reads its parameters with ``self.layer_param("reverse_param")``.

protocaffe imports plugins named in the environment variable ``PROTOCAFFE_PLUGINS``
(module names separated by commas) and those installed with an entry point in the group
``protocaffe.plugins``, before it reads the first net; or call :func:`load` with a module
name. The built-in fork layers (SSD's, SegNet's, ...) are made the same way: extensions in
``proto/forks/*.proto`` and classes registered with the same function. A worked example:
examples/plugin_layer.
"""
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from protocaffe.errors import CaffeError
from protocaffe.layer_types.base import LAYERS, Layer, register
from protocaffe.proto import caffe_pb2, forks

log = logging.getLogger("protocaffe")
ENTRY_POINT_GROUP = "protocaffe.plugins"
ENVIRONMENT = "PROTOCAFFE_PLUGINS"
_loaded = set()
_protos = []
"""The FileDescriptors of the plugins' .proto files loaded so far (a later one may import them)."""

# protoc's generated module of a plugin's .proto imports caffe.proto's as a top-level module
sys.modules.setdefault("caffe_pb2", caffe_pb2)


def register_layer(cls):
    """Register a Layer subclass under its Caffe type string ``cls.type``; returns ``cls``
    (so it serves as a class decorator). A type registered before is an error."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise CaffeError(f"a layer plugin must subclass protocaffe.layer_types.Layer, found {cls!r}")
    if not isinstance(cls.type, str) or not cls.type:
        raise CaffeError(f"layer plugin {cls.__name__} sets no type string (class attribute 'type')")
    if cls.type in LAYERS:
        raise CaffeError(f"layer type '{cls.type}' is already registered (by {LAYERS[cls.type].__module__}."
                         f"{LAYERS[cls.type].__name__}); a plugin cannot register it again")
    return register(cls)


def load(module=None):
    """Import plugin ``module``, or (without one) every plugin named by the environment and by
    installed entry points, each once. A plugin that fails to import is a CaffeError naming it."""
    if module is not None:
        return _import(module, "load()")
    names = [(m.strip(), f"${ENVIRONMENT}") for m in os.environ.get(ENVIRONMENT, "").split(",") if m.strip()]
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        names.append((ep.value.split(":")[0], f"entry point '{ep.name}' of {ep.dist.name if ep.dist else '?'}"))
    for name, origin in names:
        _import(name, origin)


def _import(name, origin):
    if name in _loaded:
        return
    try:
        importlib.import_module(name)
    except CaffeError:
        raise
    except Exception as e:  # noqa: BLE001 (any failure of a user's module is reported on one line)
        raise CaffeError(f"layer plugin '{name}' (from {origin}) failed to import: "
                         f"{type(e).__name__}: {e}") from None
    _loaded.add(name)
    log.info("Loaded layer plugin %s (from %s)", name, origin)


def load_proto(path):
    """Compile a plugin's ``.proto`` file and add its messages and extensions to protocaffe's schema.

    The file may ``import "caffe.proto";`` and the forks' ``"forks/<fork>.proto"``: protoc
    (``python -m grpc_tools.protoc``, from the grpcio-tools package) reads them from the
    schema protocaffe runs with, so none of its .proto files need be on disk. Returns a
    namespace of the file's message classes by name. Loading the same file again does nothing.
    """
    path = Path(path)
    if importlib.util.find_spec("grpc_tools") is None:
        raise CaffeError(f"{path}: compiling a plugin's .proto needs grpcio-tools (pip install grpcio-tools)")
    with tempfile.TemporaryDirectory() as tmp:
        schema_file, compiled = Path(tmp, "schema.pb"), Path(tmp, "plugin.pb")
        schema_file.write_bytes(_schema().SerializeToString())
        done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={schema_file}",
                               f"-I{path.resolve().parent}", f"--descriptor_set_out={compiled}", path.name],
                              capture_output=True, text=True)
        if done.returncode:
            raise CaffeError(f"{path}: protoc failed: {' '.join(done.stderr.split())}")
        proto = descriptor_pb2.FileDescriptorSet.FromString(compiled.read_bytes()).file[0]
    pool = descriptor_pool.Default()
    try:
        found = pool.AddSerializedFile(proto.SerializeToString())
    except TypeError as e:
        raise CaffeError(f"{path}: cannot add it to the schema: {e}") from None
    if found not in _protos:
        _protos.append(found)
    classes = message_factory.GetMessageClassesForFiles([proto.name], pool)
    log.info("Loaded plugin schema %s", path)
    return types.SimpleNamespace(**{name.rsplit(".", 1)[-1]: cls for name, cls in classes.items()})


def _schema():
    """caffe.proto, every fork's schema and the plugins' loaded so far, as one FileDescriptorSet."""
    files = [caffe_pb2.DESCRIPTOR] + [importlib.import_module(f"{forks.__name__}.{m.name}").DESCRIPTOR
                                      for m in pkgutil.iter_modules(forks.__path__)]
    out = descriptor_pb2.FileDescriptorSet()
    for f in files + _protos:
        f.CopyToProto(out.file.add())
    return out
