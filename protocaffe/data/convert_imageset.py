"""``protocaffe convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME``, as Caffe's tool.

Each ``path label`` line of LISTFILE becomes a Datum under the key
``%08d_<path>``: the image read as BGR (or gray with --gray), resized bilinearly
when both --resize_height and --resize_width are given, stored raw (C, H, W)
or, with --encoded, compressed (the file's own bytes when it already has the
requested format and no resize is asked). Unreadable images are logged and skipped.
"""
import logging
import os
import random

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from protocaffe.data.layers import read_list
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.io import array_to_datum
from protocaffe.proto import caffe_pb2

log = logging.getLogger("protocaffe")


def image_to_datum(path, label, height, width, is_color, encode_type):
    """One image file as a Datum, as Caffe's ReadImageToDatum; None if it cannot be read."""
    img = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None
    if height > 0 and width > 0:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    img = img[:, :, None] if img.ndim == 2 else img
    if encode_type:
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        same_format = ext == encode_type or (ext == "jpeg" and encode_type == "jpg")
        if same_format and not height and not width and (img.shape[2] == 3) == is_color:
            with open(path, "rb") as f:
                return caffe_pb2.Datum(data=f.read(), label=label, encoded=True)
    return array_to_datum(img.transpose(2, 0, 1), label, encode=encode_type or None)


def run(argv):
    f = Flags("convert_imageset", __doc__.splitlines()[0],
              [("root", "folder the list's paths are relative to"), ("listfile", "lines of 'path label'"),
               ("db", "the LMDB folder to create")])
    f.flag("gray", False, "read images as grayscale")
    f.flag("shuffle", False, "shuffle the order of images and labels")
    f.flag("backend", "lmdb", "the database backend (lmdb)")
    f.flag("resize_width", 0, "width images are resized to")
    f.flag("resize_height", 0, "height images are resized to")
    f.flag("check_size", False, "check that all the datums have the same size")
    f.flag("encoded", False, "store the images encoded")
    f.flag("encode_type", "", "the encoding format: png or jpg")
    args = f.parse(argv)
    if args.backend != "lmdb":
        raise CaffeError(f"backend '{args.backend}' is not supported; use --backend lmdb")
    encode_type = args.encode_type.lower() if args.encoded else ""
    if args.encoded and not encode_type:
        encode_type = "png"
    entries = read_list(args.listfile)
    if args.shuffle:
        random.Random(0).shuffle(entries)
    if os.path.exists(args.db):
        raise CaffeError(f"{args.db}: already exists; remove it or choose another name")
    os.makedirs(args.db)
    env = lmdb.open(args.db, map_size=1 << 40)
    shape, written = None, 0
    try:
        txn = env.begin(write=True)
        for line_id, (name, label) in enumerate(tqdm(entries, desc="convert_imageset", unit="img",
                                                      disable=None)):
            datum = image_to_datum(os.path.join(args.root, name), label, args.resize_height,
                                   args.resize_width, not args.gray, encode_type)
            if datum is None:
                log.warning("Could not open or find file %s", os.path.join(args.root, name))
                continue
            if args.check_size:
                size = (datum.channels, datum.height, datum.width)
                if shape is not None and size != shape:
                    raise CaffeError(f"{name}: size {size} differs from the first image's {shape}")
                shape = size
            txn.put(f"{line_id:08d}_{name}".encode(), datum.SerializeToString())
            written += 1
            if written % 1000 == 0:
                txn.commit()
                txn = env.begin(write=True)
                log.info("Processed %d files.", written)
        txn.commit()
    except BaseException:
        env.close()
        for leftover in ("data.mdb", "lock.mdb"):
            if os.path.exists(os.path.join(args.db, leftover)):
                os.unlink(os.path.join(args.db, leftover))
        os.rmdir(args.db)
        raise
    env.close()
    log.info("Processed %d files.", written)
    print(f"Processed {written} files.")
    return 0
