"""Reading and writing Caffe's files: prototxt text, binary protos, blobs, Datums.

Text errors read ``path:line:col: message``; binary errors name the file and
the message type that was expected. Writes go to a temporary file in the same
folder and are renamed into place, so a failure never leaves half a file.
A message holds at most 2 GiB - 1 bytes (protobuf's limit, Caffe's reader's
``INT_MAX``): a larger file is refused before it is read, a larger message before
it is written.
"""
import os
import secrets

import numpy as np
from google.protobuf import message as _message

from protocaffe import schema
from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2


MAX_MESSAGE_BYTES = 2**31 - 1
"""The most bytes protobuf holds in one message (Caffe's reader stops there too: INT_MAX)."""


def _check_size(size, path, doing="read"):
    if size > MAX_MESSAGE_BYTES:
        raise CaffeError(f"{path}: cannot {doing} {size} bytes as one protobuf message; protobuf "
                         f"(and Caffe) hold at most {MAX_MESSAGE_BYTES} bytes (2 GiB)")


def _read_bytes(path):
    """The bytes of a protobuf file (text or binary), refused before reading when over 2 GiB."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CaffeError(f"{path}: is a directory, expected a file")
    try:
        _check_size(os.path.getsize(path), path)
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CaffeError(f"{path}: no such file") from None
    except OSError as e:
        raise CaffeError(f"{path}: cannot read: {e.strerror}") from None


def parse_text(text, message_type, path="<string>"):
    """Parse protobuf text format into a new ``message_type``; errors name path:line:col.

    Fork and plugin fields (extensions) may appear by their bare names, as forks write them.
    """
    return schema.parse_text(text, message_type, path)


def read_text(path, message_type):
    """Read a prototxt file (NetParameter, SolverParameter, ...) as Caffe's ReadProtoFromTextFile."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CaffeError(f"{os.fspath(path)}: not a text file (byte {e.start} is not UTF-8)") from None
    return parse_text(text, message_type, os.fspath(path))


def read_binary(path, message_type):
    """Read a binary proto (.caffemodel, .solverstate, .binaryproto) of up to 2 GiB."""
    return parse_binary(_read_bytes(path), message_type, os.fspath(path))


def parse_binary(data, message_type, path="<bytes>"):
    """Parse the wire format into a new ``message_type``; errors name ``path`` and the type."""
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except _message.DecodeError as e:
        raise CaffeError(
            f"{path}: not a valid binary {message_type.DESCRIPTOR.name} ({len(data)} bytes; {e})") from None
    return msg


def _atomic_write(path, data):
    """Write ``data`` to a new file beside ``path``, then rename it over ``path``.

    The new file is made as ``open()`` would make it (mode 0666 less the umask).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CaffeError(f"{path}: is a directory, cannot write a file there")
    if not os.path.isdir(folder):
        raise CaffeError(f"{path}: folder {folder} does not exist")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise CaffeError(f"{path}: cannot write: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise CaffeError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        os.unlink(tmp)
        raise


def write_text(msg, path):
    """Write ``msg`` in protobuf text format, as Caffe's WriteProtoToTextFile."""
    _atomic_write(path, schema.to_text(msg).encode("utf-8"))


def write_binary(msg, path):
    """Write ``msg`` in the binary wire format, as Caffe's WriteProtoToBinaryFile."""
    _check_size(msg.ByteSize(), os.fspath(path), "write")
    _atomic_write(path, msg.SerializeToString())


# ---- blobs -------------------------------------------------------------------

def blob_shape(blob):
    """The shape of a BlobProto, read as Caffe's Blob::FromProto reads it.

    Any of the legacy num/channels/height/width set makes it 4-d (those take
    precedence over ``shape``); otherwise ``shape.dim``, which with no dims is
    a 0-axis scalar (Caffe leaves ``shape`` empty for one).
    """
    if is_legacy_blob(blob):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def is_legacy_blob(blob):
    """True when the blob's shape is in the old num/channels/height/width fields."""
    return any(blob.HasField(f) for f in ("num", "channels", "height", "width"))


def blob_to_array(blob, *, diff=False):
    """A BlobProto's data (or diff) as a numpy array of its shape; float32, or float64 for double_data."""
    shape = blob_shape(blob)
    if diff:
        values = blob.double_diff if len(blob.double_diff) else blob.diff
        dtype = np.float64 if len(blob.double_diff) else np.float32
    else:
        values = blob.double_data if len(blob.double_data) else blob.data
        dtype = np.float64 if len(blob.double_data) else np.float32
    arr = np.array(values, dtype=dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if arr.size != count:
        what = "diff" if diff else "data"
        raise CaffeError(f"blob of shape {shape} needs {count} {what} values, found {arr.size}")
    return arr.reshape(shape)


def array_to_blob(data, diff=None, *, legacy=False, blob=None):
    """Fill (or create) a BlobProto from numpy arrays.

    float64 input goes to ``double_data``; anything else is stored as float32.
    ``legacy=True`` writes num/channels/height/width (4-d at most) instead of ``shape``.
    """
    blob = caffe_pb2.BlobProto() if blob is None else blob
    blob.Clear()
    data = np.asarray(data)
    if legacy:
        dims = (1,) * (4 - data.ndim) + tuple(data.shape)
        if len(dims) != 4:
            raise CaffeError(f"legacy blob dims hold 4 axes at most, array has shape {data.shape}")
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(int(d) for d in data.shape)
    for values, field, dfield in ((data, "data", "double_data"), (diff, "diff", "double_diff")):
        if values is None:
            continue
        values = np.asarray(values)
        if values.dtype == np.float64:
            getattr(blob, dfield).extend(values.ravel().tolist())
        else:
            getattr(blob, field).extend(values.astype(np.float32, copy=False).ravel().tolist())
    return blob


def read_mean(path):
    """A mean file (.binaryproto) as a float32 array of shape (C, H, W)."""
    blob = read_binary(path, caffe_pb2.BlobProto)
    arr = blob_to_array(blob).astype(np.float32, copy=False)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise CaffeError(f"{os.fspath(path)}: expected a mean of shape (1, C, H, W), found {arr.shape}")
    return arr


def write_mean(mean, path):
    """Write a (C, H, W) mean as compute_image_mean does: legacy 1xCxHxW dims."""
    mean = np.asarray(mean, dtype=np.float32)
    write_binary(array_to_blob(mean[None], legacy=True), path)


# ---- Datum -------------------------------------------------------------------

def datum_to_array(datum):
    """A Datum's image as a (C, H, W) array: uint8 for raw bytes, float32 for float_data.

    Encoded Datums (PNG/JPEG in ``data``) are decoded to BGR (or gray when the
    image is single-channel), as Caffe's DecodeDatumToCVMatNative does.
    """
    if datum.encoded:
        import cv2
        img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise CaffeError("encoded Datum could not be decoded as an image")
        if img.ndim == 2:
            img = img[:, :, None]
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    shape = (datum.channels, datum.height, datum.width)
    count = shape[0] * shape[1] * shape[2]
    if datum.data:
        if len(datum.data) != count:
            raise CaffeError(f"Datum of shape {shape} needs {count} bytes, found {len(datum.data)}")
        return np.frombuffer(datum.data, np.uint8).reshape(shape)
    arr = np.array(datum.float_data, dtype=np.float32)
    if arr.size != count:
        raise CaffeError(f"Datum of shape {shape} needs {count} float values, found {arr.size}")
    return arr.reshape(shape)


def array_to_datum(arr, label=0, *, encode=None):
    """A (C, H, W) array as a Datum: uint8 to raw bytes, floats to float_data.

    ``encode='png'`` or ``'jpg'`` stores the image compressed instead (``encoded: true``).
    """
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise CaffeError(f"a Datum holds a (C, H, W) array, found shape {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    datum.label = int(label)
    if encode:
        import cv2
        ok, buf = cv2.imencode("." + encode.lstrip("."), arr.transpose(1, 2, 0))
        if not ok:
            raise CaffeError(f"cannot encode image as {encode}")
        datum.data = buf.tobytes()
        datum.encoded = True
    elif arr.dtype == np.uint8:
        datum.data = arr.tobytes()
        datum.encoded = False  # Caffe's CVMatToDatum writes the field explicitly
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    return datum
