"""``protocaffe make_shapes [--out DIR] [--train N] [--val M] [--size S] [--seed K] [--detection]``

Draws a small image-classification set straight into LMDBs of Caffe Datum
records (raw BGR, keys ``%08d_<name>`` as convert_imageset writes them):
six classes of shapes and textures (circle, square, triangle, cross, stripes,
checker) with random colours, position, scale, rotation, background and noise.
Writes DIR/train_lmdb, DIR/val_lmdb, DIR/mean.binaryproto (the train set's
mean, as compute_image_mean) and DIR/labels.txt. Deterministic for a seed.
With --detection it draws the detection set instead (shapes_detection.py).
"""
import math
import os
import shutil

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from protocaffe.errors import CaffeError
from protocaffe.flags import Flags
from protocaffe.fileio import array_to_datum, write_mean

CLASSES = ["circle", "square", "triangle", "cross", "stripes", "checker"]


def _polygon(center, radius, angle, sides):
    return np.array([[center[0] + radius * math.cos(angle + 2 * math.pi * k / sides),
                      center[1] + radius * math.sin(angle + 2 * math.pi * k / sides)]
                     for k in range(sides)], np.int32)


def _texture(img, mask_pts, color, rng, kind):
    h, w = img.shape[:2]
    period = int(rng.integers(4, 10))
    yy, xx = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == "stripes":
        on = (u // period) % 2 == 0
    else:
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        on = ((u // period) + (v // period)) % 2 == 0
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [mask_pts], 1)
    img[(mask == 1) & on] = color


def draw(label, size, rng):
    """One (size, size, 3) BGR image of class ``label``."""
    background = rng.integers(0, 256, 3)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    color = (background + rng.integers(80, 176, 3)) % 256
    color = tuple(int(c) for c in color)
    radius = rng.uniform(0.18, 0.36) * size
    margin = radius + 2
    center = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
    angle = rng.uniform(0, 2 * math.pi)
    kind = CLASSES[label]
    if kind in SOLID:
        solid(img, kind, center, radius, angle, color)
    else:
        _texture(img, _polygon(center, radius * 1.3, angle, 4), color, rng, kind)
    return add_noise(img, rng)


SOLID = ("circle", "square", "triangle", "cross")


def solid(img, kind, center, radius, angle, color):
    """Draw a filled shape of ``kind`` (one of SOLID) around ``center`` (x, y), anti-aliased."""
    if kind == "circle":
        cv2.circle(img, (int(center[0]), int(center[1])), int(radius), color, -1, cv2.LINE_AA)
    elif kind in ("square", "triangle"):
        cv2.fillPoly(img, [_polygon(center, radius, angle, 4 if kind == "square" else 3)], color, cv2.LINE_AA)
    else:
        thick = max(2, int(radius / 3))
        for a in (angle, angle + math.pi / 2):
            d = (radius * math.cos(a), radius * math.sin(a))
            cv2.line(img, (int(center[0] - d[0]), int(center[1] - d[1])),
                     (int(center[0] + d[0]), int(center[1] + d[1])), color, thick, cv2.LINE_AA)


def add_noise(img, rng):
    """The image with gaussian pixel noise of a random strength (2 to 12 levels)."""
    noise = rng.normal(0, rng.uniform(2, 12), img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_split(path, count, size, rng, desc):
    """``count`` images, classes in turn, into a new LMDB at ``path``; returns the float32 sum."""
    env = lmdb.open(path, map_size=1 << 34)
    total = np.zeros((3, size, size), np.float32)
    with env.begin(write=True) as txn:
        for i in tqdm(range(count), desc=desc, unit="img", disable=None):
            label = i % len(CLASSES)
            chw = draw(label, size, rng).transpose(2, 0, 1)
            total += chw
            key = f"{i:08d}_{CLASSES[label]}_{i:05d}.png"
            txn.put(key.encode(), array_to_datum(chw, label).SerializeToString())
    env.close()
    return total


def make_shapes(out, train=3000, val=600, size=64, seed=1):
    """Build the dataset in folder ``out`` (which must not hold one already)."""
    if os.path.exists(os.path.join(out, "train_lmdb")) or os.path.exists(os.path.join(out, "val_lmdb")):
        raise CaffeError(f"{out}: already holds a dataset; remove it or choose another --out")
    if train < len(CLASSES) or val < len(CLASSES) or size < 16:
        raise CaffeError(f"need at least {len(CLASSES)} train and val images and --size of 16 or more")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    try:
        total = write_split(os.path.join(out, "train_lmdb"), train, size, rng, "train")
        write_split(os.path.join(out, "val_lmdb"), val, size, rng, "val")
    except BaseException:
        for name in ("train_lmdb", "val_lmdb"):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        raise
    write_mean(total / np.float32(train), os.path.join(out, "mean.binaryproto"))
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("".join(f"{i} {name}\n" for i, name in enumerate(CLASSES)))


def run(argv):
    f = Flags("make_shapes", __doc__.splitlines()[0])
    f.flag("out", "examples/shapes/data", "the folder to write")
    f.flag("train", 3000, "number of training images")
    f.flag("val", 600, "number of validation images")
    f.flag("size", 64, "image width and height")
    f.flag("seed", 1, "random seed")
    f.flag("detection", False, "draw the detection set instead: several shapes per image, VOC XML boxes")
    f.flag("objects", 3, "with --detection, the most shapes in one image")
    args = f.parse(argv)
    if args.detection:
        from protocaffe.datasets.shapes_detection import CLASSES as BOXED, make_shapes_detection
        make_shapes_detection(args.out, args.train, args.val, args.size, args.seed, args.objects)
        print(f"Wrote {args.train} train and {args.val} val images of up to {args.objects} shapes "
              f"({', '.join(BOXED)}) with VOC boxes to {args.out}")
        return 0
    make_shapes(args.out, args.train, args.val, args.size, args.seed)
    print(f"Wrote {args.train} train and {args.val} val images of {len(CLASSES)} classes to {args.out}")
    return 0
