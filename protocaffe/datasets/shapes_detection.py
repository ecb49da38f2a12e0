"""The shapes dataset with boxes, for detection (``protocaffe make_shapes --detection``).

Each image shows one to ``max_objects`` filled shapes (circle, square, triangle) of random
size, colour, rotation and place on a random background, with pixel noise; shapes overlap
little (boxes with a jaccard overlap above 0.1 are redrawn). Written as the SSD fork's
VOC-style inputs, ready for ``protocaffe convert_annoset``:

- ``images/<split>_NNNNN.jpg`` and ``annotations/<split>_NNNNN.xml`` (VOC XML: size, and per
  object its name, difficult 0 and bndbox; xmax and ymax are the pixel edges past the shape, so
  a box divided by the image size is the shape's extent);
- ``labelmap.prototxt`` (background 0, then the classes), ``train.txt`` and ``val.txt``
  (``image annotation`` pairs), ``val_name_size.txt`` (``name height width``, as get_image_size).
Deterministic for a seed.
"""
import os

import cv2
import numpy as np
from tqdm import tqdm

from protocaffe import schema
from protocaffe.datasets.shapes import add_noise, solid
from protocaffe.errors import CaffeError
from protocaffe.proto.forks import ssd_pb2

CLASSES = ("circle", "square", "triangle")
MAX_OVERLAP = 0.1
TRIES = 20


def _overlap(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _shape_box(kind, center, radius, angle, size):
    """The shape's box (xmin, ymin, xmax, ymax) in pixels, edges past its last pixels, from the
    pixels it covers by half or more; None if it covers none."""
    mask = np.zeros((size, size), np.uint8)
    solid(mask, kind, center, radius, angle, 255)
    ys, xs = np.nonzero(mask >= 128)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def draw_scene(size, rng, max_objects):
    """One (size, size, 3) BGR image and its objects [(class name, (xmin, ymin, xmax, ymax))]."""
    background = rng.integers(0, 256, 3)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _ in range(TRIES):
            kind = CLASSES[int(rng.integers(len(CLASSES)))]
            radius = rng.uniform(0.1, 0.24) * size
            center = tuple(rng.uniform(radius + 1, size - radius - 1, 2))
            angle = rng.uniform(0, 2 * np.pi)
            box = _shape_box(kind, center, radius, angle, size)
            if box is not None and all(_overlap(box, b) <= MAX_OVERLAP for _, b in objects):
                break
        else:
            continue
        color = tuple(int(c) for c in (background + rng.integers(80, 176, 3)) % 256)
        solid(img, kind, center, radius, angle, color)
        objects.append((kind, box))
    return add_noise(img, rng), objects


def voc_xml(filename, size, objects):
    """A VOC annotation file's text."""
    parts = [f"<annotation>\n  <folder>images</folder>\n  <filename>{filename}</filename>\n"
             f"  <size>\n    <width>{size}</width>\n    <height>{size}</height>\n    <depth>3</depth>\n  </size>\n"]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n"
                     f"    <truncated>0</truncated>\n    <difficult>0</difficult>\n    <bndbox>\n"
                     f"      <xmin>{x0}</xmin>\n      <ymin>{y0}</ymin>\n      <xmax>{x1}</xmax>\n"
                     f"      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>\n")
    return "".join(parts) + "</annotation>\n"


def label_map():
    """background 0, then the classes from 1."""
    labels = ssd_pb2.LabelMap()
    for i, name in enumerate(("background",) + CLASSES):
        labels.item.add(name=name, label=i, display_name=name)
    return labels


def make_shapes_detection(out, train=2000, val=300, size=96, seed=1, max_objects=3):
    """Build the detection dataset in folder ``out`` (which must not hold one already)."""
    if os.path.exists(os.path.join(out, "train.txt")):
        raise CaffeError(f"{out}: already holds a detection dataset; remove it or choose another --out")
    if train < 1 or val < 1 or size < 32 or max_objects < 1:
        raise CaffeError("need at least 1 train and val image, --size of 32 or more and --objects of 1 or more")
    for folder in ("images", "annotations"):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = []
    for split, count in (("train", train), ("val", val)):
        lines = []
        for i in tqdm(range(count), desc=split, unit="img", disable=None):
            name = f"{split}_{i:05d}"
            img, objects = draw_scene(size, rng, max_objects)
            cv2.imwrite(os.path.join(out, "images", name + ".jpg"), img)
            with open(os.path.join(out, "annotations", name + ".xml"), "w") as f:
                f.write(voc_xml(name + ".jpg", size, objects))
            lines.append(f"images/{name}.jpg annotations/{name}.xml\n")
            if split == "val":
                sizes.append(f"{name} {size} {size}\n")
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(out, "val_name_size.txt"), "w") as f:
        f.writelines(sizes)
    with open(os.path.join(out, "labelmap.prototxt"), "w") as f:
        f.write(schema.to_text(label_map()))
