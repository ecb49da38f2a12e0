"""HDF5 layers, through h5py: HDF5Data reads rows of .h5 files, HDF5Output writes two blobs to one.

HDF5Data's ``source`` is a text file listing .h5 files (whitespace-separated;
relative paths are opened from the working directory, as Caffe opens them,
not from the list's folder). Each top reads the dataset of its own name;
rows come in order through one file, then the next, wrapping around after
the last. Like Caffe, a whole file is loaded at a time; values become float32.
"""
import os

import h5py
import numpy as np
import torch

from protocaffe.caffe_random import CRand
from protocaffe.distributed import solver_count, solver_rank
from protocaffe.errors import CaffeError
from protocaffe.layer_types.base import Layer, legacy_shape, register
from protocaffe.proto import caffe_pb2


def read_source(source):
    """The .h5 paths listed in ``source``, as Caffe reads them (whitespace-separated words)."""
    try:
        with open(source) as f:
            paths = f.read().split()
    except OSError as e:
        raise CaffeError(f"cannot read the HDF5 source list {source}: {e.strerror}") from None
    if not paths:
        raise CaffeError(f"{source}: lists no HDF5 files, expected at least one")
    return paths


def read_datasets(path, names):
    """{name: float32 array} for each dataset ``name`` of the HDF5 file ``path``; every
    dataset needs at least one axis and all the same (non-zero) number of rows."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        where = "" if os.path.isabs(path) else f" (relative to the working directory {os.getcwd()})"
        raise CaffeError(f"cannot open HDF5 file {path}{where}: {e}") from None
    arrays = {}
    with f:
        for name in names:
            if not isinstance(f.get(name), h5py.Dataset):
                found = ", ".join(sorted(f)) or "nothing"
                raise CaffeError(f"{path}: no dataset '{name}' for the top of that name; the file holds {found}")
            ds = f[name]
            if ds.dtype.kind not in "fiub" or ds.ndim < 1:
                raise CaffeError(f"{path}: dataset '{name}' must hold numbers with at least one axis, "
                                 f"found {ds.dtype} of shape {ds.shape}")
            arrays[name] = np.asarray(ds, dtype=np.float32)
    first = names[0]
    for name in names:
        rows = len(arrays[name])
        if rows == 0 or rows != len(arrays[first]):
            raise CaffeError(f"{path}: dataset '{name}' has {rows} rows, dataset '{first}' has "
                             f"{len(arrays[first])}; all need the same non-zero number")
    return arrays


SHUFFLE = CRand()
"""One stream per process, as the C library's: shuffling layers draw from it in the order they run."""


class Rows:
    """A cursor over the rows of several HDF5 files, in order, wrapping around; Caffe's
    HDF5DataLayer, draw for draw.

    With ``shuffle``, the file order is shuffled at the start and at every wrap, a file's
    row order when it is loaded, and the current row order again each time its rows
    run out (so twice for a newly loaded file), all from :data:`SHUFFLE`. ``take``
    skips the rows of other solvers as Caffe's Skip(): row k of the stream goes to
    solver ``k % count``.
    """

    def __init__(self, paths, names, shuffle=False):
        self.paths, self.names, self.shuffle = paths, names, shuffle
        self.order = self._shuffled(list(range(len(paths))))
        self.file = 0
        self.offset = 0
        self.shapes = None
        self._load()
        self.first = paths[self.order[0]]
        self.shapes = [self.arrays[n].shape[1:] for n in names]

    def _shuffled(self, values):
        if self.shuffle:
            SHUFFLE.shuffle(values)
        return values

    def _load(self):
        path = self.paths[self.order[self.file]]
        self.arrays = read_datasets(path, self.names)
        for name, shape in zip(self.names, self.shapes or ()):
            if self.arrays[name].shape[1:] != shape:
                raise CaffeError(f"{path}: dataset '{name}' has rows of shape {self.arrays[name].shape[1:]}, "
                                 f"those of {self.first} have {shape}")
        self.rows = self._shuffled(list(range(len(self.arrays[self.names[0]]))))
        self.row = 0

    def _advance(self):
        """After a file's last row: the next file (loaded), or the same one again."""
        if len(self.paths) > 1:
            self.file += 1
            if self.file == len(self.paths):
                self.file = 0
                self.order = self._shuffled(self.order)
            self._load()
        self.row = 0
        self._shuffled(self.rows)

    def take(self, n, rank=0, count=1):
        """The next ``n`` rows of every dataset for solver ``rank`` of ``count``, as one array per name."""
        parts = [[] for _ in self.names]
        while n:
            remaining = len(self.rows) - self.row
            picks = range((rank - self.offset) % count, remaining, count)[:n]
            if picks:
                index = [self.rows[self.row + j] for j in picks]
                for part, name in zip(parts, self.names):
                    part.append(self.arrays[name][index])
                n -= len(picks)
            used = picks[-1] + 1 if picks and n == 0 else remaining
            self.row, self.offset = self.row + used, self.offset + used
            if self.row == len(self.rows):
                self._advance()
        return [np.concatenate(part) for part in parts]


@register
class HDF5Data(Layer):
    """Rows of the HDF5 files listed in ``hdf5_data_param.source``, ``batch_size`` at a time.

    Tops: one per dataset, named as the dataset, (batch_size,) + the dataset's row
    shape (from the first file). No transformation (as in Caffe, transform_param
    is an error). ``shuffle`` gives Caffe's orders (:class:`CRand`). In TRAIN, solver
    r of n (several processes) reads rows r, r + n, ... of the stream, as Caffe.
    """
    type = "HDF5Data"
    num_bottoms = 0
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        p = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            raise self.error("does not transform data; remove transform_param")
        if p.batch_size <= 0:
            raise self.error(f"hdf5_data_param.batch_size must be positive, found {p.batch_size}")
        try:
            self.rows = Rows(read_source(p.source), list(self.param.top), p.shuffle)
        except CaffeError as e:
            raise self.error(str(e)) from None

    def top_shapes(self, bottom_shapes):
        n = self.param.hdf5_data_param.batch_size
        return [(n,) + tuple(shape) for shape in self.rows.shapes]

    def forward(self):
        shard = (solver_rank(), solver_count()) if self.phase == caffe_pb2.TRAIN else (0, 1)
        try:
            arrays = self.rows.take(self.param.hdf5_data_param.batch_size, *shard)
        except CaffeError as e:
            raise self.error(str(e)) from None
        out = tuple(torch.from_numpy(a).to(self.ctx.device) for a in arrays)
        return out[0] if len(out) == 1 else out


@register
class HDF5Output(Layer):
    """Writes bottoms data (N, ...) and label (N, ...) as float32 datasets ``data`` and ``label``
    of ``hdf5_output_param.file_name``, each in Caffe's 4-d legacy shape ((3, 1) -> (3, 1, 1, 1)).

    No tops and no gradients. As in Caffe the file is created (emptied) when the net
    is built and written at a forward; Caffe can write only once (a second forward
    fails), protocaffe rewrites the file, which then holds the last forward's batch.
    """
    type = "HDF5Output"
    num_bottoms = 2
    num_tops = 0

    def setup(self, bottom_shapes):
        self.file_name = self.param.hdf5_output_param.file_name
        for name, shape in zip(self.param.bottom, bottom_shapes):
            if not 1 <= len(shape) <= 4:
                raise self.error(f"bottom '{name}' must have 1 to 4 axes, found shape {shape}")
        if bottom_shapes[0][0] != bottom_shapes[1][0]:
            raise self.error(f"data and label need the same number of items, found shapes {bottom_shapes}")
        self._write({})

    def top_shapes(self, bottom_shapes):
        return []

    def _write(self, datasets):
        try:
            with h5py.File(self.file_name, "w") as f:
                for name, array in datasets.items():
                    f.create_dataset(name, data=array)
        except OSError as e:
            raise self.error(f"cannot write HDF5 file {self.file_name}: {e}") from None

    def forward(self, data, label):
        if data.shape[0] != label.shape[0]:
            raise self.error(f"data and label need the same number of items, found {data.shape[0]} "
                             f"and {label.shape[0]}")
        arrays = {name: x.detach().cpu().float().numpy().reshape(legacy_shape(x.shape))
                  for name, x in (("data", data), ("label", label))}
        self._write(arrays)
        return ()
