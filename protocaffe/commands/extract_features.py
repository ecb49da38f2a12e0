"""``protocaffe extract_features WEIGHTS NET.prototxt BLOB[,BLOB...] DB[,DB...] NUM_MINI_BATCHES lmdb [CPU|GPU] [DEVICE_ID]``

Caffe's tools/extract_features: runs the net (TEST phase, its own data layer) for
NUM_MINI_BATCHES forward passes and writes every item of each named blob as a
Datum of float_data (channels/height/width: the blob's legacy 4-d axes after
the batch) under keys 0000000000, 0000000001, ... into a new LMDB per blob.
"""
import os

import lmdb
import numpy as np
import torch

from protocaffe import log as logs
from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2

COMMIT_EVERY = 1000


def feature_datum(item):
    """One item of a blob (its axes after the batch) as a float Datum, as Caffe fills it."""
    dims = tuple(item.shape) + (1,) * (3 - item.ndim)
    datum = caffe_pb2.Datum(channels=dims[0], height=dims[1], width=dims[2])
    datum.float_data.extend(item.ravel().tolist())
    return datum


class _FeatureDB:
    """A new LMDB written in transactions of COMMIT_EVERY records."""

    def __init__(self, path, blob):
        if os.path.exists(path):
            raise CaffeError(f"{path}: already exists; extract_features makes a new database")
        log.info("Opening dataset %s", path)
        os.makedirs(path)
        self.path, self.blob, self.count = path, blob, 0
        self.env = lmdb.open(path, map_size=1 << 40, subdir=True)
        self.txn = self.env.begin(write=True)

    def put(self, item):
        self.txn.put(f"{self.count:010d}".encode(), feature_datum(item).SerializeToString())
        self.count += 1
        if self.count % COMMIT_EVERY == 0:
            self.txn.commit()
            self.txn = self.env.begin(write=True)
            log.info("Extracted features of %d query images for feature blob %s", self.count, self.blob)

    def close(self):
        self.txn.commit()
        log.info("Extracted features of %d query images for feature blob %s", self.count, self.blob)
        self.env.close()


def _whole(text, what):
    if not text.isdecimal():
        raise CaffeError(f"{what} must be a whole number, found '{text}'")
    return int(text)


def _device(args):
    if len(args) > 6 and args[6] == "GPU":
        if not torch.cuda.is_available():
            raise CaffeError("GPU was asked for, but no CUDA device is available")
        device_id = _whole(args[7], "DEVICE_ID") if len(args) > 7 else 0
        log.info("Using GPU, Device_id=%d", device_id)
        return torch.device("cuda", device_id)
    log.info("Using CPU")
    return torch.device("cpu")


def run(argv):
    if len(argv) < 6 or argv[0] in ("-h", "--help", "-help"):
        print("usage: " + __doc__.splitlines()[0].strip("`").replace("``", ""))
        print("\n".join(__doc__.splitlines()[2:]))
        return 0 if argv[:1] and argv[0] in ("-h", "--help", "-help") else 2
    logs.setup()
    weights, proto, blob_list, db_list, batches, db_type = argv[:6]
    batches = _whole(batches, "NUM_MINI_BATCHES")
    blobs, dbs = blob_list.split(","), db_list.split(",")
    if len(blobs) != len(dbs):
        raise CaffeError(f"the number of blob names ({len(blobs)}) and dataset names ({len(dbs)}) must be equal")
    if db_type != "lmdb":
        raise CaffeError(f"db_type '{db_type}': protocaffe writes lmdb only")
    device = _device(argv)
    net = build_net(proto, caffe_pb2.TEST, weights=weights, device=device)
    missing = [b for b in blobs if b not in net.blob_shapes]
    if missing:
        raise CaffeError(f"Unknown feature blob name {missing[0]} in the network {proto}")
    writers = [_FeatureDB(path, blob) for path, blob in zip(dbs, blobs)]
    log.info("Extracting Features")
    with torch.no_grad():
        for _ in range(batches):
            out = net()
            for blob, writer in zip(blobs, writers):
                for item in out[blob].float().cpu().numpy().astype(np.float32):
                    writer.put(item)
    for writer in writers:
        writer.close()
    log.info("Successfully extracted the features!")
    return 0
