"""Reading Caffe's LMDB databases of Datum records: in key order, wrapping at the end.

Databases are opened read-only without a lock file (``lock=False``), so the
read-only fixtures and databases on read-only media open as Caffe's do.
"""
import os
import weakref

import cv2
import lmdb
import numpy as np

from protocaffe.errors import CaffeError
from protocaffe.fileio import datum_to_array
from protocaffe.proto import caffe_pb2

_ENVS = weakref.WeakValueDictionary()
"""(process id, real path) -> Environment. LMDB allows one environment per file and
process, so the readers in a process share one, which closes when the last of
them is gone. A forked worker must not use the one it inherited: it closes its
copy and opens its own."""


def open_lmdb(path, what="database"):
    """Open an LMDB folder read-only; a CaffeError naming the path if it is not one or is empty."""
    path = os.fspath(path)
    key = (os.getpid(), os.path.realpath(path))
    env = _ENVS.get(key)
    if env is not None:
        return env
    for inherited in [k for k in _ENVS if k[1] == key[1]]:
        _ENVS.pop(inherited).close()
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "data.mdb")):
        raise CaffeError(f"{path}: no LMDB {what} here (expected a folder holding data.mdb)")
    try:
        env = lmdb.open(path, readonly=True, lock=False, max_readers=512)
        entries = env.stat()["entries"]
    except lmdb.Error as e:
        raise CaffeError(f"{path}: cannot open as LMDB: {e}") from None
    if entries == 0:
        raise CaffeError(f"{path}: the LMDB {what} is empty")
    _ENVS[key] = env
    return env


class Cursor:
    """Endless records of an LMDB in key order: after the last comes the first again."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.env = open_lmdb(self.path)
        self.txn = self.env.begin(buffers=False)
        self.cursor = self.txn.cursor()
        self.cursor.first()

    def __len__(self):
        return self.env.stat()["entries"]

    def next(self):
        """The current (key, value), then move on."""
        key, value = self.cursor.item()
        self.advance()
        return key, value

    def advance(self):
        """Move to the next record without reading it (values stay on their pages)."""
        if not self.cursor.next():
            self.cursor.first()

    def close(self):
        self.cursor.close()
        self.txn.abort()


def decode_datum(raw, source, force_color=False, force_gray=False):
    """A serialized Datum -> ((C, H, W) uint8 or float32 array, label).

    Encoded images decode as stored (Caffe's DecodeDatumToCVMatNative), or in
    colour / gray with ``force_color`` / ``force_gray`` (DecodeDatumToCVMat).
    As in Caffe, the force flags do nothing to raw Datums. Errors name ``source``.
    """
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(raw)
    except Exception:
        raise CaffeError(f"{source}: a record is not a valid Datum ({len(raw)} bytes)") from None
    if not datum.encoded and datum.channels <= 0:
        raise CaffeError(f"{source}: a record is not a Datum image: it has {datum.channels} channels "
                         f"(Caffe needs channels > 0); an LMDB of other records, such as BlobProtos, "
                         f"is not a data source ({len(raw)} bytes)")
    if datum.encoded and (force_color or force_gray):
        flag = cv2.IMREAD_COLOR if force_color else cv2.IMREAD_GRAYSCALE
        img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), flag)
        if img is None:
            raise CaffeError(f"{source}: an encoded Datum could not be decoded as an image")
        img = img[:, :, None] if img.ndim == 2 else img
        return np.ascontiguousarray(img.transpose(2, 0, 1)), datum.label
    try:
        arr = datum_to_array(datum)
    except CaffeError as e:
        raise CaffeError(f"{source}: {e}") from None
    if arr.dtype not in (np.uint8, np.float32):
        raise CaffeError(f"{source}: an encoded image of type {arr.dtype}; only 8-bit images are supported")
    return arr, datum.label


class LmdbReader:
    """Batch ``k`` of an LMDB: item ``j`` is record ``start + (k * batch_size + j) * shards + shard``
    (modulo the count), decoded.

    ``(shard, shards)`` is Caffe's (solver_rank, solver_count): with several
    solvers, each takes every ``shards``-th record of the one endless stream, so
    in each pass over the database every record goes to exactly one of them.
    Batches are found by position, so any number of workers each reading every
    n-th batch give the same stream; moving forward skips records unread.
    The cursor opens lazily in the process that reads, so a forked worker has its own.
    """

    def __init__(self, path, batch_size, start, force_color, force_gray, shard=(0, 1)):
        self.path, self.batch_size, self.start = os.fspath(path), batch_size, start
        self.force_color, self.force_gray = force_color, force_gray
        self.shard = shard
        self.count = open_lmdb(self.path).stat()["entries"]
        self._cursor, self._pid, self._pos = None, None, 0

    def batch(self, k):
        """(list of (C, H, W) arrays, float32 labels) for batch ``k``."""
        items = [decode_datum(record, self.path, self.force_color, self.force_gray) for record in self.records(k)]
        return [a for a, _ in items], np.array([label for _, label in items], np.float32)

    def records(self, k):
        """The serialized records of batch ``k``, in order."""
        rank, shards = self.shard
        return [self._read((self.start + (k * self.batch_size + j) * shards + rank) % self.count)
                for j in range(self.batch_size)]

    def _read(self, position):
        if self._cursor is None or self._pid != os.getpid():
            self._cursor, self._pid, self._pos = Cursor(self.path), os.getpid(), 0
        for _ in range((position - self._pos) % self.count):
            self._cursor.advance()
        self._pos = (position + 1) % self.count
        return self._cursor.next()[1]

    def close(self):
        """Let go of the cursor (before forking workers, so none inherits an open transaction)."""
        if self._cursor is not None and self._pid == os.getpid():
            self._cursor.close()
        self._cursor = None
