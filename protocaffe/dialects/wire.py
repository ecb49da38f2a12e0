"""Protobuf wire format, just enough to move a fork's fields off numbers BVLC Caffe took.

A fork that numbered a field where BVLC Caffe later put another (SSD's SolverParameter 41
and 42) is read by renumbering its binary file first: every field of the listed messages
found at the fork's number moves to the number protocaffe's schema gives it; nothing else
changes, byte for byte. The walk follows the schema into nested messages.
"""
import functools

from protocaffe.errors import CaffeError

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = range(6)


def _varint(data, pos):
    value = shift = 0
    while True:
        if pos >= len(data):
            raise CaffeError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CaffeError("varint longer than 10 bytes")


def _encode_varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _skip(data, pos, wire_type):
    if wire_type == VARINT:
        return _varint(data, pos)[1]
    if wire_type == FIXED64:
        return pos + 8
    if wire_type == FIXED32:
        return pos + 4
    if wire_type == LENGTH:
        size, pos = _varint(data, pos)
        return pos + size
    raise CaffeError(f"wire type {wire_type} (groups) does not occur in Caffe's files")


def renumber(data, descriptor, moves, depth=0, local=None):
    """``data`` (a serialized ``descriptor`` message) with fields moved as ``moves`` says.

    ``moves`` maps a scope to rules {(fork number, wire type): target}:
    - a message's full name ("caffe.SolverParameter"): that message wherever it occurs;
    - (message full name, layer type), e.g. ("caffe.LayerParameter", "Upsample"): only in
      layers of that type (found from the layer's ``type`` field, wherever it sits).
    A target is protocaffe's number, or (number, rules) where ``rules`` renumber the fields of
    the moved sub-message itself. The wire type tells a fork's string from BVLC's bool where
    both sit on one number.
    """
    if depth > 100:
        raise CaffeError("messages nested more than 100 deep")
    if depth == 0:
        _reaches.cache_clear()  # plugins may have added extensions since the last file
    rules = dict(moves.get(descriptor.full_name, {}))
    rules.update(local or {})
    if "type" in descriptor.fields_by_name and any(isinstance(k, tuple) for k in moves):
        rules.update(moves.get((descriptor.full_name, _layer_type(data)), {}))
    out = bytearray()
    pos = 0
    while pos < len(data):
        key, body = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        end = _skip(data, body, wire_type)
        if end > len(data):
            raise CaffeError("a field runs past the end of the data")
        target = rules.get((number, wire_type), number)
        number, inner_rules = target if isinstance(target, tuple) else (target, None)
        f = descriptor.fields_by_number.get(number) or _extension_by_number(descriptor, number)
        if (f is not None and f.message_type is not None and wire_type == LENGTH
                and (inner_rules or _reaches(f.message_type, _scoped_messages(moves)))):
            size, start = _varint(data, body)
            inner = renumber(bytes(data[start:start + size]), f.message_type, moves, depth + 1, inner_rules)
            out += _encode_varint(number << 3 | LENGTH) + _encode_varint(len(inner)) + inner
        else:
            out += _encode_varint(number << 3 | wire_type) + data[body:end]
        pos = end
    return bytes(out)


def _scoped_messages(moves):
    return frozenset(k if isinstance(k, str) else k[0] for k in moves)


def _layer_type(data):
    """The ``type`` string (field 2) of a serialized LayerParameter, or None."""
    pos = 0
    while pos < len(data):
        key, body = _varint(data, pos)
        end = _skip(data, body, key & 7)
        if key == (2 << 3 | LENGTH):
            size, start = _varint(data, body)
            return bytes(data[start:start + size]).decode("utf-8", "replace")
        pos = end
    return None


def _extension_by_number(descriptor, number):
    if not descriptor.is_extendable:
        return None
    for ext in descriptor.file.pool.FindAllExtensions(descriptor):
        if ext.number == number:
            return ext
    return None


@functools.lru_cache(maxsize=None)
def _reaches(descriptor, targets):
    """Whether a message of this type can hold (at any depth) one of the ``targets`` messages:
    only those subtrees are walked, the rest (weights) is copied as it is."""
    return _reaches_from(descriptor, targets, set())


def _reaches_from(descriptor, targets, seen):
    if descriptor.full_name in targets:
        return True
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    fields = list(descriptor.fields)
    if descriptor.is_extendable:
        fields += descriptor.file.pool.FindAllExtensions(descriptor)
    return any(f.message_type is not None and _reaches_from(f.message_type, targets, seen) for f in fields)
