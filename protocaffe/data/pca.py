"""``protocaffe compute_pca [--backend lmdb] DB OUT.binaryproto``: AlexNet's colour PCA of a training set.

The covariance of the pixels' channels (intensities scaled to [0, 1]) over
every pixel of every image in DB, and its eigen-decomposition, largest
eigenvalue first. OUT is one (C + 1, C) blob, (4, 3) for colour images: rows
0 to C - 1 the eigenvectors, one per row, row C their eigenvalues. Channels
are in the stored order (BGR for convert_imageset's images). With
``transform_param { pca_file: "OUT" pca_std: 0.1 }`` a TRAIN data layer adds
AlexNet's lighting noise to each image (see transform.Pca).
"""
import numpy as np
from tqdm import tqdm

from protocaffe import fileio
from protocaffe import log as logs
from protocaffe.data.db import decode_datum, open_lmdb
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log
from protocaffe.log import g
from protocaffe.proto import caffe_pb2


def channel_covariance(path):
    """The (C, C) covariance of the channels of every pixel in the LMDB at ``path``, in [0, 1] units.

    Per-image means and scatter matrices are merged pairwise (Chan et al.), in float64.
    """
    env = open_lmdb(path)
    count, mean, scatter = 0, None, None
    with env.begin() as txn:
        for _, value in tqdm(txn.cursor(), total=env.stat()["entries"], desc="compute_pca", unit="img",
                             disable=None):
            image, _ = decode_datum(value, path)
            x = image.reshape(image.shape[0], -1).astype(np.float64) / 255.0
            if mean is None:
                mean, scatter = np.zeros(len(x)), np.zeros((len(x), len(x)))
            elif len(x) != len(mean):
                raise CaffeError(f"{path}: images with {len(x)} and {len(mean)} channels")
            n = x.shape[1]
            image_mean = x.mean(1)
            centred = x - image_mean[:, None]
            delta = image_mean - mean
            total = count + n
            scatter += centred @ centred.T + np.outer(delta, delta) * count * n / total
            mean += delta * n / total
            count = total
    return scatter / count


def principal_components(covariance):
    """(eigenvalues, eigenvectors one per row) of a covariance matrix, largest eigenvalue first."""
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order].T


def write_pca(values, vectors, path):
    fileio.write_binary(fileio.array_to_blob(np.vstack([vectors, values[None]]).astype(np.float32)), path)


def read_pca(path):
    """(eigenvalues (C,), eigenvectors (C, C) one per row) as float64 from a compute_pca file."""
    table = fileio.blob_to_array(fileio.read_binary(path, caffe_pb2.BlobProto)).astype(np.float64)
    if table.ndim != 2 or table.shape[0] != table.shape[1] + 1:
        raise CaffeError(f"{path}: a PCA file holds a (C + 1, C) blob (eigenvectors, then eigenvalues), "
                         f"found shape {table.shape}")
    return table[-1], table[:-1]


def run(argv):
    f = Flags("compute_pca", __doc__.splitlines()[0],
              [("db", "the training LMDB"), ("out", "the .binaryproto to write")])
    f.flag("backend", "lmdb", "the database type; lmdb is the one supported")
    args = f.parse(argv)
    logs.setup()
    if args.backend != "lmdb":
        raise CaffeError(f"--backend {args.backend}: only lmdb is supported")
    values, vectors = principal_components(channel_covariance(args.db))
    write_pca(values, vectors, args.out)
    for i, value in enumerate(values):
        log.info("eigenvalue [%d]: %s  eigenvector: [%s]", i, g(value), ", ".join(g(v) for v in vectors[i]))
    log.info("Write to %s", args.out)
    return 0
