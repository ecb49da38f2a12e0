"""AlexNet's PCA colour augmentation (the paper's section 4.1), which Caffe lacks.

``protocaffe compute_pca DB OUT.binaryproto`` finds the eigenvectors and
eigenvalues of the 3x3 covariance of all pixel colours in an LMDB (pixels taken
in [0, 1]). With ``transform_param { pca_file: "OUT.binaryproto" }`` each TRAIN
image then gets sum_i a_i * lambda_i * v_i (times 255, back in pixel units)
added to every pixel, a_i ~ N(0, pca_std), drawn once per image.
"""
import numpy as np
from tqdm import tqdm

from protocaffe import io
from protocaffe.data.db import decode_datum, open_lmdb
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags


def colour_pca(path):
    """(eigenvectors as rows (3, 3), eigenvalues (3,)) of the LMDB's pixel colour covariance."""
    env = open_lmdb(path)
    n, total, outer = 0, np.zeros(3), np.zeros((3, 3))
    with env.begin() as txn:
        for _, value in tqdm(txn.cursor(), total=env.stat()["entries"], desc="compute_pca", unit="img",
                             disable=None):
            img, _ = decode_datum(value, path)
            if img.shape[0] != 3:
                raise CaffeError(f"{path}: colour PCA needs 3-channel images, found {img.shape[0]}")
            pixels = img.reshape(3, -1).astype(np.float64) / 255.0
            n += pixels.shape[1]
            total += pixels.sum(1)
            outer += pixels @ pixels.T
    mean = total / n
    cov = outer / n - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return vectors[:, order].T.astype(np.float32), values[order].astype(np.float32)


def load_pca(path):
    """A pca_file as (eigenvectors (3, 3) as rows, eigenvalues (3,))."""
    arr = io.blob_to_array(io.read_binary(path, io.caffe_pb2.BlobProto))
    if arr.shape != (4, 3):
        raise CaffeError(f"{path}: a PCA file holds a (4, 3) blob, found {arr.shape}")
    return arr[:3], arr[3]


def colour_shift(vectors, values, std, n, rng):
    """Per-image colour shifts (n, 3) in pixel units: 255 * V^T (a * lambda), a ~ N(0, std)."""
    alpha = rng.normal(0.0, std, (n, 3))
    return (255.0 * (alpha * values) @ vectors).astype(np.float32)


def run(argv):
    f = Flags("compute_pca", __doc__.splitlines()[0], [("db", "the training LMDB"), ("out", "the .binaryproto to write")])
    args = f.parse(argv)
    vectors, values = colour_pca(args.db)
    io.write_binary(io.array_to_blob(np.vstack([vectors, values[None]])), args.out)
    for v, lam in zip(vectors, values):
        print(f"eigenvalue {lam:.6g}: eigenvector (B, G, R) {v[0]:.6g} {v[1]:.6g} {v[2]:.6g}")
    return 0
