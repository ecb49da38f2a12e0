"""``protocaffe compute_image_mean DB [OUT.binaryproto]``: the mean image of an LMDB, as Caffe's tool.

Sums in float32 record by record (so the figures equal Caffe's), divides by the
count, prints the per-channel means and writes the mean as a 1 x C x H x W blob.
"""
import numpy as np
from tqdm import tqdm

from protocaffe.data.db import open_lmdb, decode_datum
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.io import write_mean


def image_mean(path):
    """The (C, H, W) float32 mean of every Datum in the LMDB at ``path``."""
    env = open_lmdb(path)
    total, n = None, 0
    with env.begin() as txn:
        for key, value in tqdm(txn.cursor(), total=env.stat()["entries"], desc="compute_image_mean",
                               unit="img", disable=None):
            arr, _ = decode_datum(value, path)
            if total is None:
                total = np.zeros(arr.shape, np.float32)
            elif arr.shape != total.shape:
                raise CaffeError(f"{path}: record {key.decode(errors='replace')} has shape {arr.shape}, "
                                 f"the first had {total.shape}; all images must have one size")
            total += arr
            n += 1
    return total / np.float32(n)


def run(argv):
    f = Flags("compute_image_mean", __doc__.splitlines()[0],
              [("db", "the LMDB to average"), ("out", "the .binaryproto to write")])
    f.parser.set_defaults(out=None)
    f.parser._actions[-1].nargs = "?"
    f.flag("backend", "lmdb", "the database backend (lmdb)")
    args = f.parse(argv)
    mean = image_mean(args.db)
    if args.out:
        write_mean(mean, args.out)
    print(f"Number of channels: {mean.shape[0]}")
    for c, value in enumerate(mean.reshape(mean.shape[0], -1).mean(1)):
        print(f"mean_value channel [{c}]: {value:g}")
    return 0
