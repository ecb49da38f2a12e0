"""``protocaffe get_image_size [FLAGS] ROOTFOLDER/ LISTFILE OUTFILE``, as the SSD fork's tool.

For each pair ``image anything`` of LISTFILE (a convert_annoset list) writes a line
``name height width``: the image file's stem (its name without folders and extension), or
with --name_id_file (lines of ``name id``, one per image) its id. The detection evaluation
reads these sizes (DetectionEvaluate's ``name_size_file``). Images are ROOTFOLDER/path.
"""
import os

import cv2

from protocaffe import log as logs
from protocaffe.data.annotated.convert_annoset import read_pairs
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.log import LOGGER as log


def read_name_ids(path, count):
    """{name: id} from lines of ``name id``; a name given twice, or a count other than the images', is an error."""
    ids = {}
    for name, value in read_pairs(path):
        if name in ids:
            raise CaffeError(f"{path}: the name '{name}' appears twice")
        try:
            ids[name] = int(value)
        except ValueError:
            raise CaffeError(f"{path}: expected 'name id' pairs, found '{name} {value}'") from None
    if len(ids) != count:
        raise CaffeError(f"{path}: {len(ids)} names for {count} images")
    return ids


def run(argv):
    f = Flags("get_image_size", __doc__.splitlines()[0],
              [("root", "the folder the list's paths are relative to"), ("listfile", "pairs of 'image label'"),
               ("outfile", "the 'name height width' file to write")])
    f.flag("name_id_file", "", "a file of 'name id' lines: write ids instead of names")
    args = f.parse(argv)
    logs.setup()
    pairs = read_pairs(args.listfile)
    log.info("A total of %d images.", len(pairs))
    ids = read_name_ids(args.name_id_file, len(pairs)) if args.name_id_file else None
    lines = []
    for image, _ in pairs:
        path = os.path.join(args.root, image)
        img = cv2.imread(path)
        if img is None:
            raise CaffeError(f"could not open or find the image {path}")
        name = os.path.splitext(os.path.basename(image))[0]
        if ids is not None and name not in ids:
            raise CaffeError(f"{args.name_id_file}: no id for the image '{name}'")
        lines.append(f"{ids[name] if ids is not None else name} {img.shape[0]} {img.shape[1]}\n")
    try:
        with open(args.outfile, "w") as out:
            out.writelines(lines)
    except OSError as e:
        raise CaffeError(f"{args.outfile}: cannot write: {e.strerror}") from None
    log.info("Processed %d files.", len(lines))
    return 0
