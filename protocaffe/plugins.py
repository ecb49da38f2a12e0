"""Layer plugins: a fork's layer type added without editing protocaffe.

A plugin is a Python module that, when imported,

1. registers its parameter message, if the layer has one, as an extension of
   ``caffe.LayerParameter`` at the fork's field number: a ``.proto`` file that
   ``import "caffe.proto";`` and ``extend LayerParameter { ... }``, compiled with protoc
   (``python -m grpc_tools.protoc``) and imported. Its prototxt then reads the field by its
   bare name (``shuffle_channel_param { group: 3 }``) and its binary files read and write at the
   fork's number;
2. registers its layer class with :func:`register_layer`: a subclass of
   :class:`protocaffe.layer_types.Layer` with ``type`` (the prototxt type string), ``setup``,
   ``top_shapes`` and ``forward``; backward comes from autograd, or from a
   ``torch.autograd.Function`` where the fork's gradient is not the derivative of its
   forward. The layer reads its parameters with ``self.layer_param("shuffle_channel_param")``.

protocaffe imports plugins named in the environment variable ``PROTOCAFFE_PLUGINS``
(module names separated by commas) and those installed with an entry point in the group
``protocaffe.plugins``, before it reads the first net; or call :func:`load` with a module
name. The built-in fork layers (SSD's, ...) are made the same way: extensions in
``proto/forks/*.proto`` and classes registered with the same function.
"""
import importlib
import importlib.metadata
import logging
import os

from protocaffe.errors import CaffeError
from protocaffe.layer_types.base import LAYERS, Layer, register

log = logging.getLogger("protocaffe")
ENTRY_POINT_GROUP = "protocaffe.plugins"
ENVIRONMENT = "PROTOCAFFE_PLUGINS"
_loaded = set()


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
