"""``protocaffe convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME``, as Caffe's tool.

Each ``path label`` line of LISTFILE becomes a Datum under the key
``%08d_<path>`` (the line's number, so skipped images leave gaps). Images are
read from ROOTFOLDER + path (joined as text: give the trailing '/') as BGR, or
gray with --gray, and resized bilinearly when both --resize_height and
--resize_width are given. Raw Datums hold (C, H, W) bytes; with --encoded (or
an --encode_type) they hold a PNG/JPEG: the file's own bytes when its format
already matches and nothing is resized, otherwise the image re-encoded.
Without --encode_type the format is guessed from each file's extension.
Unreadable images are logged and skipped.
"""
import functools
import os
import random

import cv2
import lmdb
from tqdm import tqdm

from protocaffe import log as logs
from protocaffe.data.images import read_image, read_list
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.fileio import array_to_datum
from protocaffe.log import LOGGER as log
from protocaffe.proto import caffe_pb2

COMMIT_EVERY = 1000


def _extension(path):
    return path.rpartition(".")[2].lower() if "." in path else path.lower()


def image_to_datum(img, path, label, resize_asked, is_color, encoding, sized=False):
    """An image read from ``path`` as a Datum, as Caffe's ReadImageToDatum: raw (C, H, W) bytes,
    or with an ``encoding`` the file's own bytes when they already are that format and the
    image was not to be resized, else the image re-encoded. ``sized``: the SSD fork's version,
    which records channels, height and width of an encoded image in every case (BVLC's leaves
    them out of a file kept as is)."""
    if not encoding:
        return array_to_datum(img.transpose(2, 0, 1), label)
    ext = _extension(path)
    size = dict(zip(("height", "width", "channels"), img.shape)) if sized else {}
    if (img.shape[2] == 3) == is_color and not resize_asked and (
            ext == encoding or (encoding == "jpg" and ext == "jpeg")):
        with open(path, "rb") as f:
            return caffe_pb2.Datum(data=f.read(), label=label, encoded=True, **size)
    ok, buf = cv2.imencode("." + encoding, img)
    if not ok:
        raise CaffeError(f"{path}: cannot encode the image as '{encoding}'")
    return caffe_pb2.Datum(data=buf.tobytes(), label=label, encoded=True, **size)


def image_flags(f):
    """The flags convert_imageset and the SSD fork's convert_annoset share."""
    f.flag("gray", False, "read the images as single-channel gray")
    f.flag("shuffle", False, "write the images in a shuffled order (the keys keep the new order)")
    f.flag("backend", "lmdb", "the database type; lmdb is the one supported")
    f.flag("resize_width", 0, "resize to this width (with --resize_height; 0 keeps the size)")
    f.flag("resize_height", 0, "resize to this height (with --resize_width; 0 keeps the size)")
    f.flag("encoded", False, "store compressed images instead of raw pixels")
    f.flag("encode_type", "", "the compression for --encoded: png, jpg, ...; default: each file's own")
    return f


def _flags():
    f = image_flags(Flags("convert_imageset", __doc__.splitlines()[0],
                          [("root", "the folder the list's paths are relative to, with a trailing '/'"),
                           ("listfile", "lines of 'path label'"), ("db", "the LMDB folder to create")]))
    f.flag("check_size", False, "fail unless every image has the size of the first")
    return f


def run(argv):
    args = _flags().parse(argv)
    logs.setup()
    if args.backend != "lmdb":
        raise CaffeError(f"--backend {args.backend}: only lmdb is supported")
    if args.encode_type and not args.encoded:
        log.info("encode_type specified, assuming encoded=true.")
    encoded = args.encoded or bool(args.encode_type)
    entries = read_list(args.listfile)
    if args.shuffle:
        log.info("Shuffling data")
        random.Random(0).shuffle(entries)
    log.info("A total of %d images.", len(entries))
    write_db(args.db, entries, functools.partial(_record, args, encoded, {}), args.root, "convert_imageset")
    return 0


def _record(args, encoded, first, line_id, entry):
    """The key and Datum of one list line, or None if its image cannot be read; ``first`` keeps
    the first image's size for --check_size."""
    name, label = entry
    path = args.root + name
    img = read_image(path, args.resize_height, args.resize_width, not args.gray)
    if img is None:
        log.error("Could not open or find file %s", path)
        return None
    if args.check_size:
        size = first.setdefault("size", img.shape)
        if img.shape != size:
            raise CaffeError(f"{path}: image of (height, width, channels) {img.shape}, "
                             f"the first was {size} (--check_size)")
    encoding = (args.encode_type or _extension(name)).lower() if encoded else ""
    datum = image_to_datum(img, path, label, bool(args.resize_height or args.resize_width), not args.gray, encoding)
    return f"{line_id:08d}_{name}".encode(), datum.SerializeToString()


def write_db(path, entries, record, root, desc):
    """A new LMDB at ``path`` holding ``record(line_id, entry)`` (key, value) of each entry, or
    nothing for an entry whose record is None (its image could not be read); committed every
    COMMIT_EVERY records. The folder is removed again when anything fails or no record was made."""
    if os.path.exists(path):
        raise CaffeError(f"{path}: already exists; remove it or choose another name")
    os.makedirs(path)
    try:
        count = _write(path, entries, record, desc)
    except BaseException:
        _remove_db(path)
        raise
    if count == 0:
        _remove_db(path)
        raise CaffeError(f"none of the {len(entries)} images could be read from '{root}' "
                         "(the folder is joined to each path as text: does it need a trailing '/'?)")


def _write(path, entries, record, desc):
    env = lmdb.open(path, map_size=1 << 40, subdir=True)
    try:
        count = 0
        txn = env.begin(write=True)
        for line_id, entry in enumerate(tqdm(entries, desc=desc, unit="img", disable=None)):
            item = record(line_id, entry)
            if item is None:
                continue
            txn.put(*item)
            count += 1
            if count % COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
                log.info("Processed %d files.", count)
        txn.commit()
        if count % COMMIT_EVERY:
            log.info("Processed %d files.", count)
        return count
    finally:
        env.close()


def _remove_db(path):
    for name in ("data.mdb", "lock.mdb"):
        if os.path.exists(os.path.join(path, name)):
            os.unlink(os.path.join(path, name))
    os.rmdir(path)
