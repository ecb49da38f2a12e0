"""``protocaffe convert_annoset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME``, as the SSD fork's tool.

Writes an LMDB of AnnotatedDatum records, byte for byte as the fork's convert_annoset does.
LISTFILE holds whitespace-separated pairs: ``image label`` (--anno_type classification) or
``image annotation_file`` (--anno_type detection, the file read as --label_type xml, json or txt,
names mapped to labels by --label_map_file). Paths are ROOTFOLDER + path (joined as text).
The key of line n is ``%08d_<image path>``. The Datum holds the image as convert_imageset
stores it (raw pixels, or with --encoded the file's own bytes when its extension is
--encode_type, else the image re-encoded; without --encode_type the fork takes the extension
*with its dot*, which never equals a file's, so every image is re-encoded in its own format),
with its label (-1 for detection) and, for detection, the annotation type BBOX and one
AnnotationGroup per label. A detection image whose annotation file does not exist gets no
boxes; an image that cannot be read is logged and skipped.
"""
import functools
import os
import random
import re

from protocaffe import log as logs
from protocaffe.data.annotated import annotations
from protocaffe.data.convert_imageset import image_flags, image_to_datum, write_db
from protocaffe.data.images import read_image
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log
from protocaffe.proto.forks import ssd_pb2


def _flags():
    f = image_flags(Flags("convert_annoset", __doc__.splitlines()[0],
                          [("root", "the folder the list's paths are relative to, with a trailing '/'"),
                           ("listfile", "pairs of 'image label' or 'image annotation_file'"),
                           ("db", "the LMDB folder to create")]))
    f.flag("anno_type", "classification", "the type of annotation: classification or detection")
    f.flag("label_type", "xml", "the annotation file format: xml, json or txt")
    f.flag("label_map_file", "", "a LabelMap (protobuf text) mapping names to labels")
    f.flag("check_label", False, "fail if the label map names a class twice")
    f.flag("min_dim", 0, "scale images so that their shorter side is at least this (keeping the aspect ratio)")
    f.flag("max_dim", 0, "scale images so that their longer side is at most this (keeping the aspect ratio)")
    f.flag("check_size", False, "fail unless every Datum's data has the size of the first's pixels")
    return f


def read_pairs(path):
    """The whitespace-separated pairs of a list file, as the fork's ``infile >> a >> b`` reads them."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError as e:
        raise CaffeError(f"{path}: cannot read the list: {e.strerror}") from None
    return list(zip(words[0::2], words[1::2]))


def run(argv):
    args = _flags().parse(argv)
    logs.setup()
    if args.backend != "lmdb":
        raise CaffeError(f"--backend {args.backend}: only lmdb is supported")
    if args.anno_type not in ("classification", "detection"):
        raise CaffeError(f"--anno_type {args.anno_type}: expected classification or detection")
    names = None
    pairs = read_pairs(args.listfile)
    if args.anno_type == "detection":
        if args.label_type not in ("xml", "json", "txt"):
            raise CaffeError(f"--label_type {args.label_type}: expected xml, json or txt")
        if not args.label_map_file:
            raise CaffeError("--anno_type detection needs --label_map_file")
        names = annotations.name_to_label(annotations.read_label_map(args.label_map_file), args.check_label,
                                          args.label_map_file)
    else:
        for image, label in pairs:
            if not re.fullmatch(r"[+-]?\d+", label):
                raise CaffeError(f"{args.listfile}: expected 'image label' pairs, found '{image} {label}'")
    if args.shuffle:
        log.info("Shuffling data")
        random.Random(0).shuffle(pairs)
    log.info("A total of %d images.", len(pairs))
    if args.encode_type and not args.encoded:
        log.info("encode_type specified, assuming encoded=true.")
    write_db(args.db, pairs, functools.partial(_record, args, names, {}), args.root, "convert_annoset")
    return 0


def _encoding(args, name):
    if not (args.encoded or args.encode_type):
        return ""
    if args.encode_type:
        return args.encode_type.lower()
    if "." not in name:
        raise CaffeError(f"cannot guess the encoding of '{name}' (no extension); give --encode_type")
    return name[name.rindex("."):].lower()


def to_anno_datum(args, image, second, names):
    """One list line as an AnnotatedDatum, or None if the image cannot be read."""
    path = args.root + image
    img = read_image(path, args.resize_height, args.resize_width, not args.gray,
                     min_dim=max(0, args.min_dim), max_dim=max(0, args.max_dim))
    if img is None:
        log.error("Could not open or find file %s", path)
        return None
    asked = bool(args.resize_height or args.resize_width or args.min_dim > 0 or args.max_dim > 0)
    detection = names is not None
    label = -1 if detection else int(second)
    anno = ssd_pb2.AnnotatedDatum()
    anno.datum.CopyFrom(image_to_datum(img, path, label, asked, not args.gray, _encoding(args, image), sized=True))
    if detection:
        anno.type = ssd_pb2.AnnotatedDatum.BBOX
        label_file = args.root + second
        if os.path.exists(label_file):
            original = read_image(path, 0, 0, True) if asked or args.gray else img
            if not annotations.read_annotations(args.label_type, label_file, original.shape[:2], names, anno):
                return None
    return anno


def _record(args, names, first, line_id, pair):
    """The key and AnnotatedDatum of one list line, or None if it cannot be read; ``first`` keeps
    the first image's pixel count for --check_size (compared, as the fork does, with the data's length)."""
    image, second = pair
    anno = to_anno_datum(args, image, second, names)
    if anno is None:
        log.warning("Failed to read %s", image)
        return None
    datum = anno.datum
    if args.check_size:
        pixels = first.setdefault("pixels", datum.channels * datum.height * datum.width)
        if len(datum.data) != pixels:
            raise CaffeError(f"{args.root + image}: {len(datum.data)} bytes of data, the first image "
                             f"had {pixels} pixels (--check_size)")
    return f"{line_id:08d}_{image}".encode(), anno.SerializeToString()
