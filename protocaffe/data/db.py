"""Reading Caffe's LMDB databases of Datum records, in key order, wrapping at the end."""
import os

import cv2
import lmdb
import numpy as np

from protocaffe.errors import CaffeError
from protocaffe.proto import caffe_pb2


_ENVS = {}


def open_lmdb(path, what="database"):
    """Open an LMDB folder read-only (no lock file needed); a clear error if it is not one.

    LMDB allows one environment per file and process, so layers reading the same
    database (a train and a test net) share it; it stays open for the process.
    """
    path = os.fspath(path)
    key = os.path.realpath(path)
    if key in _ENVS:
        return _ENVS[key]
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "data.mdb")):
        raise CaffeError(f"{path}: no LMDB {what} here (expected a folder holding data.mdb)")
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, max_readers=512)
    except lmdb.Error as e:
        raise CaffeError(f"{path}: cannot open as LMDB: {e}") from None
    if env.stat()["entries"] == 0:
        raise CaffeError(f"{path}: the LMDB {what} is empty")
    _ENVS[key] = env
    return env


class Cursor:
    """Endless (key, value) records of an LMDB in key order: after the last comes the first again."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.env = open_lmdb(self.path)
        self.txn = self.env.begin(buffers=False)
        self.cursor = self.txn.cursor()
        self.cursor.first()

    def __len__(self):
        return self.env.stat()["entries"]

    def next(self):
        key, value = self.cursor.item()
        if not self.cursor.next():
            self.cursor.first()
        return key, value

    def skip(self, n):
        """Move past ``n`` records without reading them."""
        for _ in range(n):
            if not self.cursor.next():
                self.cursor.first()

    def close(self):
        self.cursor.close()
        self.txn.abort()


def decode_datum(raw, source, force_color=False, force_gray=False):
    """A serialized Datum -> ((C, H, W) uint8 or float32 array, label).

    Encoded images decode as stored (colour or gray) unless ``force_color`` or
    ``force_gray`` is set, as Caffe's DecodeDatumToCVMatNative / DecodeDatumToCVMat.
    """
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(raw)
    except Exception:
        raise CaffeError(f"{source}: a record is not a valid Datum ({len(raw)} bytes)") from None
    if datum.encoded:
        flag = cv2.IMREAD_COLOR if force_color else cv2.IMREAD_GRAYSCALE if force_gray else cv2.IMREAD_ANYCOLOR
        img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), flag)
        if img is None:
            raise CaffeError(f"{source}: an encoded Datum could not be decoded as an image")
        img = img[:, :, None] if img.ndim == 2 else img
        return img.transpose(2, 0, 1), datum.label
    shape = (datum.channels, datum.height, datum.width)
    if datum.data:
        arr = np.frombuffer(datum.data, np.uint8)
    else:
        arr = np.asarray(datum.float_data, np.float32)
    if arr.size != shape[0] * shape[1] * shape[2]:
        raise CaffeError(f"{source}: a Datum of shape {shape} holds {arr.size} values")
    arr = arr.reshape(shape)
    if force_gray and shape[0] == 3:
        arr = cv2.cvtColor(np.ascontiguousarray(arr.transpose(1, 2, 0)), cv2.COLOR_BGR2GRAY)[None]
    elif force_color and shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return arr, datum.label
