"""Caffe's schema with the forks' and plugins' fields: one set of messages, read by name.

BVLC's fields are ordinary fields of ``caffe_pb2``. A fork's fields (``prior_box_param``
of SSD, ...) and a plugin's are protobuf *extensions* of the same messages, declared in
their own ``.proto`` files (``proto/forks/*.proto``, or a plugin's) at the numbers the fork
uses, so their binary files read and write unchanged. Caffe's forks wrote them in prototxt
by their bare names (``prior_box_param { ... }``) where protobuf's text format wants
``[caffe.prior_box_param] { ... }``; this module reads and writes the bare names and lets
code address any field, ordinary or extension, by name:

    get(layer_param, "prior_box_param")       # the sub-message (or value)
    has(layer_param, "prior_box_param")       # whether the file sets it
    assign(layer_param, "prior_box_param", m) # set a value, or merge a message
    parse_text(text, caffe_pb2.NetParameter)  # prototxt with bare extension names
    to_text(message)                          # and back, as the fork writes it

``str()`` of any message of caffe.proto is ``to_text``: what pycaffe's users print (a net
made by net_spec, a solver) reads as the fork's own text.
"""
import re

from google.protobuf import descriptor as _descriptor
from google.protobuf import text_format

from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2

MAX_TEXT_DEPTH = 100
"""Nesting depth at which a prototxt is refused (protobuf's recommended limit for text)."""


def extensions_of(descriptor):
    """{bare name: FieldDescriptor} of every extension of ``descriptor`` known to its pool.

    Two extensions of one message with the same bare name (two plugins' ``bn_param``) are
    ambiguous in a prototxt: that name maps to None and reading it is an error.
    """
    found = {}
    for ext in descriptor.file.pool.FindAllExtensions(descriptor):
        found[ext.name] = None if ext.name in found else ext
    return found


def _extension(descriptor, name):
    """The extension of ``descriptor`` named ``name`` (bare), or None; an ambiguous name is an error."""
    if not descriptor.is_extendable:
        return None
    known = extensions_of(descriptor)
    if name in known and known[name] is None:
        owners = [e.full_name for e in descriptor.file.pool.FindAllExtensions(descriptor) if e.name == name]
        raise CaffeError(f"field '{name}' of {descriptor.name} is defined twice, by {' and '.join(owners)}; "
                         f"load only one of the plugins or forks that define it")
    return known.get(name)


def field(descriptor, name):
    """The FieldDescriptor of field ``name`` of ``descriptor``: an ordinary field or an extension."""
    return descriptor.fields_by_name.get(name) or _extension(descriptor, name)


def field_names(descriptor):
    """Every field name a prototxt may use in this message: Caffe's, then the extensions'."""
    return list(descriptor.fields_by_name) + sorted(n for n, e in extensions_of(descriptor).items() if e)


def get(message, name):
    """``message.<name>`` for an ordinary field or an extension (by its bare name)."""
    if name in message.DESCRIPTOR.fields_by_name:
        return getattr(message, name)
    ext = _extension(message.DESCRIPTOR, name)
    if ext is None:
        raise AttributeError(f"{message.DESCRIPTOR.full_name} has no field or loaded extension '{name}'")
    return message.Extensions[ext]


def assign(message, name, value):
    """``message.<name> = value`` for an ordinary field or an extension; a message value is
    merged in (protobuf does not assign sub-messages)."""
    f = field(message.DESCRIPTOR, name)
    if f is None:
        raise AttributeError(f"{message.DESCRIPTOR.full_name} has no field or loaded extension '{name}'")
    if f.message_type is not None and not f.is_repeated:
        get(message, name).MergeFrom(value)
    elif f.is_extension:
        message.Extensions[f] = value
    else:
        setattr(message, name, value)


def has(message, name):
    """Whether ``message`` sets field ``name`` (ordinary or extension; a repeated one when non-empty)."""
    f = field(message.DESCRIPTOR, name)
    if f is None:
        return False
    if f.is_extension:
        return len(message.Extensions[f]) > 0 if f.is_repeated else message.HasExtension(f)
    return len(getattr(message, name)) > 0 if f.is_repeated else message.HasField(name)


# ---- text --------------------------------------------------------------------------------

class _Parser(text_format._Parser):  # noqa: SLF001 (protobuf's text parser, one hook added)
    """protobuf's text parser, also taking an extension by its bare name where the message has
    no ordinary field of that name, as the forks' own (generated-in) schemas read it."""

    def _MergeField(self, tokenizer, message):  # noqa: N802 (protobuf's name)
        name = tokenizer.token
        descriptor = message.DESCRIPTOR
        ext = None
        if re.fullmatch(r"[A-Za-z_]\w*", name) and name not in descriptor.fields_by_name:
            try:
                ext = _extension(descriptor, name)
            except CaffeError as e:
                raise tokenizer.ParseError(str(e)) from None
        if ext is None:
            return super()._MergeField(tokenizer, message)
        tokenizer.NextToken()
        if ext.cpp_type == _descriptor.FieldDescriptor.CPPTYPE_MESSAGE:
            tokenizer.TryConsume(":")
            merge = self._MergeMessageField
        else:
            tokenizer.Consume(":")
            merge = self._MergeScalarField
        if ext.is_repeated and tokenizer.TryConsume("["):
            if not tokenizer.TryConsume("]"):
                merge(tokenizer, message, ext)
                while not tokenizer.TryConsume("]"):
                    tokenizer.Consume(",")
                    merge(tokenizer, message, ext)
        else:
            merge(tokenizer, message, ext)
        if not tokenizer.TryConsume(","):
            tokenizer.TryConsume(";")


def parse_text(text, message_type, path="<string>"):
    """Parse protobuf text (bare extension names allowed) into a new ``message_type``.

    Errors are CaffeErrors reading ``path:line:col: message``.
    """
    msg = message_type()
    try:
        _Parser(max_recursion_depth=MAX_TEXT_DEPTH).ParseLines(text.split("\n"), msg)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        detail = str(e)
        prefix = f"{line}:{col} : "
        if detail.startswith(prefix):
            detail = detail[len(prefix):]
        if "Message too deep" in detail:
            detail = f"nested more than {MAX_TEXT_DEPTH} messages deep; a Caffe file never is"
        where = f"{path}:{line}:{col}" if line is not None else path
        raise CaffeError(f"{where}: {detail}") from None
    except RecursionError:
        raise CaffeError(f"{path}: nested too deeply to read") from None
    return msg


_BRACKETED = re.compile(r"^(\s*)\[([\w.]+)\]", re.M)


def to_text(message):
    """``message`` in protobuf text format as C++ protobuf prints it (floats shortest: 1, not
    1.0), extensions by their bare names (as forks write them)."""
    native = _NATIVE_STR.get(type(message), str)
    return _BRACKETED.sub(lambda m: m.group(1) + m.group(2).rsplit(".", 1)[-1], native(message))


_NATIVE_STR = {}
"""message class -> protobuf's own ``__str__``, for the classes whose ``str()`` is to_text."""


def _text_like_the_forks(module):
    """Make ``str()`` of every message class of a generated module print bare extension names."""
    for descriptor in module.DESCRIPTOR.message_types_by_name.values():
        cls = getattr(module, descriptor.name)
        _NATIVE_STR.setdefault(cls, cls.__str__)
        cls.__str__ = to_text


_text_like_the_forks(caffe_pb2)
