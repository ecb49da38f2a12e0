"""``protocaffe compute_image_mean [--backend lmdb] DB [OUT.binaryproto]``, as Caffe's tool.

Adds the images up in float32, record after record, divides by the count
(so every value equals Caffe's), writes the mean as a 1 x C x H x W blob and
logs each channel's mean as Caffe does. Encoded Datums are decoded as stored.
"""
import numpy as np
from tqdm import tqdm

from protocaffe import log as logs
from protocaffe.data.db import decode_datum, open_lmdb
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.fileio import write_mean
from protocaffe.log import LOGGER as log
from protocaffe.log import g


def image_mean(path):
    """The (C, H, W) float32 mean of every Datum in the LMDB at ``path``."""
    env = open_lmdb(path)
    total, count = None, 0
    with env.begin() as txn:
        for key, value in tqdm(txn.cursor(), total=env.stat()["entries"], desc="compute_image_mean",
                               unit="img", disable=None):
            image, _ = decode_datum(value, path)
            if total is None:
                total = np.zeros(image.shape, np.float32)
            elif image.shape != total.shape:
                raise CaffeError(f"{path}: record {key.decode(errors='replace')} has shape {image.shape}, "
                                 f"the first had {total.shape}; all images must have one size")
            total += image
            count += 1
            if count % 10000 == 0:
                log.info("Processed %d files.", count)
    if count % 10000:
        log.info("Processed %d files.", count)
    return total / np.float32(count)


def channel_means(mean):
    """Each channel's average, summed in float32 in pixel order as Caffe sums it."""
    flat = mean.reshape(mean.shape[0], -1)
    return [np.add.accumulate(row, dtype=np.float32)[-1] / np.float32(flat.shape[1]) for row in flat]


def run(argv):
    f = Flags("compute_image_mean", __doc__.splitlines()[0], [("db", "the LMDB to average")])
    f.parser.add_argument("out", nargs="?", default="", help="the .binaryproto to write (optional)")
    f.flag("backend", "lmdb", "the database type; lmdb is the one supported")
    args = f.parse(argv)
    logs.setup()
    if args.backend != "lmdb":
        raise CaffeError(f"--backend {args.backend}: only lmdb is supported")
    log.info("Starting iteration")
    mean = image_mean(args.db)
    if args.out:
        log.info("Write to %s", args.out)
        write_mean(mean, args.out)
    log.info("Number of channels: %d", mean.shape[0])
    for c, value in enumerate(channel_means(mean)):
        log.info("mean_value channel [%d]: %s", c, g(value))
    return 0
