"""make_shapes: write the built-in shapes dataset, for classification (one shape per image,
protocaffe.datasets.shapes) or, with --detection, for SSD (several boxed shapes per image,
protocaffe.datasets.shapes_detection)."""
from protocaffe.datasets.shapes import CLASSES, make_shapes
from protocaffe.datasets.shapes_detection import CLASSES as BOXED, make_shapes_detection
from protocaffe.flags import Flags


def run(argv):
    f = Flags("make_shapes", "Write the built-in shapes dataset.")
    f.flag("out", "examples/shapes/data", "the folder to write")
    f.flag("train", 3000, "number of training images")
    f.flag("val", 600, "number of validation images")
    f.flag("size", 64, "image width and height")
    f.flag("seed", 1, "random seed")
    f.flag("detection", False, "draw the detection set instead: several shapes per image, VOC XML boxes")
    f.flag("objects", 3, "with --detection, the most shapes in one image")
    args = f.parse(argv)
    if args.detection:
        make_shapes_detection(args.out, args.train, args.val, args.size, args.seed, args.objects)
        print(f"Wrote {args.train} train and {args.val} val images of up to {args.objects} shapes "
              f"({', '.join(BOXED)}) with VOC boxes to {args.out}")
        return 0
    make_shapes(args.out, args.train, args.val, args.size, args.seed)
    print(f"Wrote {args.train} train and {args.val} val images of {len(CLASSES)} classes to {args.out}")
    return 0
