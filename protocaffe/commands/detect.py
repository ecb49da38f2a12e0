"""``protocaffe detect MODEL WEIGHTS INPUT [flags]``: the SSD fork's ``ssd_detect`` (examples/ssd/ssd_detect.cpp).

INPUT is an image, or a list file of images (every whitespace-separated word a path, as the
fork reads it). Each image is converted to the net's channels, resized to its input size
(bilinear), made float, minus the mean, times ``--normalize_value``, and run through the
TEST net on the deployment fast path. Each box of the net's DetectionOutput scoring at least
``--confidence_threshold`` is one line, as the fork prints it::

    image label score xmin ymin xmax ymax

(label an integer, score with 6 significant digits, corners in pixels of the original image,
truncated). ``--draw_dir`` also writes each image with its boxes drawn, ``--tile`` all of them
side by side in one picture. Where protocaffe differs: only images (the fork's
``--file_type video`` is not offered); an ``--out_file`` that cannot be written is an error
(the fork prints to the screen instead); ``--normalize_value`` (a scale after the mean, as
MobileNet-SSD's 0.007843) is not in weiliu89's tool.
"""
import os

import cv2
import numpy as np
import torch

from protocaffe.commands.common import device_for, parse_gpu
from protocaffe.data.annotated.annotations import read_label_map
from protocaffe.errors import CaffeError
from protocaffe.fileio import read_mean
from protocaffe.flags import Flags
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DRAW_SIZE = 200  # drawn images are enlarged to at least this many pixels on the short side
COLOURS = [(0, 0, 255), (0, 200, 0), (255, 0, 0), (0, 200, 255), (255, 0, 255), (255, 255, 0)]


def parser():
    f = Flags("detect", __doc__.splitlines()[0],
              [("model_file", "the deploy net (.prototxt) ending in a DetectionOutput layer"),
               ("weights_file", "its weights (.caffemodel)"),
               ("input", "an image, or a list file of image paths")])
    f.flag("mean_file", "", "a .binaryproto mean: its per-channel average is subtracted")
    f.flag("mean_value", "104,117,123", "one value, or one per channel, to subtract; give --mean_value '' "
           "with --mean_file")
    f.flag("normalize_value", 1.0, "multiply the image by this after subtracting the mean")
    f.flag("out_file", "", "write the detections to this file instead of the screen")
    f.flag("confidence_threshold", 0.01, "only report detections scoring at least this")
    f.flag("label_map_file", "", "a LabelMap prototxt: label names on the drawn images")
    f.flag("draw_dir", "", "write each image with its boxes drawn into this folder")
    f.flag("tile", "", "write the drawn images side by side into this picture (.png, .jpg)")
    f.flag("gpu", "", "the GPU id to use; empty for the CPU")
    return f


class SSDDetector:
    """A deploy net with one input and a DetectionOutput: ``detect(image)`` gives its rows
    ``[image_id, label, score, xmin, ymin, xmax, ymax]`` (corners relative to the image)."""

    def __init__(self, model_file, weights_file, mean, normalize_value, device):
        self.net = build_net(model_file, caffe_pb2.TEST, weights=weights_file, device=device).eval()
        self.net.keep_all_blobs = False
        if len(self.net.input_names) != 1:
            raise CaffeError(f"{model_file}: expected a net with exactly one input, found "
                             f"{len(self.net.input_names)} ({', '.join(self.net.input_names) or 'none'})")
        self.output = _detection_output(self.net, model_file)
        self.input = self.net.input_names[0]
        shape = self.net.blob_shapes[self.input]
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise CaffeError(f"{model_file}: expected an input of shape (N, 1 or 3, H, W), found {tuple(shape)}")
        self.channels, self.height, self.width = shape[1:]
        self.mean = _mean_pixel(mean, self.channels)
        self.normalize_value = normalize_value
        self.device = device

    def preprocess(self, img):
        """The fork's Preprocess: channels converted, resized, float, minus the mean; then scaled."""
        img = _to_channels(img, self.channels)
        if img.shape[:2] != (self.height, self.width):
            img = cv2.resize(img, (self.width, self.height))
        img = img.astype(np.float32).reshape(self.height, self.width, self.channels) - self.mean
        if self.normalize_value != 1:
            img = img * np.float32(self.normalize_value)
        return img.transpose(2, 0, 1)[None]

    def detect(self, img):
        data = torch.from_numpy(np.ascontiguousarray(self.preprocess(img))).to(self.device)
        with torch.no_grad():
            rows = self.net(**{self.input: data})[self.output].cpu().numpy().reshape(-1, 7)
        return rows[rows[:, 0] != -1]


def _detection_output(net, model_file):
    for step in net.plan:
        if net.layers[step.key].type == "DetectionOutput" and step.tops[0] in net.output_names:
            return step.tops[0]
    raise CaffeError(f"{model_file}: expected a net whose output comes from a DetectionOutput layer "
                     f"(as detection_out), found outputs {', '.join(net.output_names) or 'none'}")


def _mean_pixel(mean, channels):
    """The fork's SetMean: a mean file's per-channel average, or the values of --mean_value."""
    mean_file, mean_value = mean
    if mean_file and mean_value:
        raise CaffeError("cannot give --mean_file and --mean_value at the same time "
                         "(--mean_value has a default: give --mean_value '' with --mean_file)")
    if mean_file:
        blob = read_mean(mean_file)
        if blob.shape[0] != channels:
            raise CaffeError(f"{mean_file}: the mean has {blob.shape[0]} channels, the net's input {channels}")
        return blob.reshape(channels, -1).mean(axis=1, dtype=np.float64).astype(np.float32)
    if not mean_value:
        return np.zeros(channels, np.float32)
    try:
        values = [float(v) for v in mean_value.split(",")]
    except ValueError:
        raise CaffeError(f"--mean_value expects numbers separated by ',', found '{mean_value}'") from None
    if len(values) not in (1, channels):
        raise CaffeError(f"--mean_value: give one value or as many as the input's {channels} channels, "
                         f"found {len(values)}")
    return np.array(values * (channels // len(values)), np.float32)


def _to_channels(img, channels):
    """cv2.imread(-1)'s gray, BGR or BGRA image with the net's channels (BGR or gray)."""
    have = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1 and have > 1:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if have == 3 else cv2.COLOR_BGRA2GRAY)
    if channels == 3 and have != 3:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR if have == 1 else cv2.COLOR_BGRA2BGR)
    return img


def image_paths(path):
    """The input: one image, or the words of a list file."""
    if not os.path.isfile(path):
        raise CaffeError(f"{path}: no such image or list file")
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return [path]
    with open(path) as f:
        return f.read().split()


def read_image(path):
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CaffeError(f"{path}: unable to decode the image (missing or not an image)")
    return img


def box_lines(path, img, rows, threshold):
    """The fork's output lines for the rows of one image scoring at least ``threshold``."""
    h, w = np.float32(img.shape[0]), np.float32(img.shape[1])
    return [f"{path} {int(r[1])} {float(r[2]):g} {int(r[3] * w)} {int(r[4] * h)} {int(r[5] * w)} {int(r[6] * h)}"
            for r in rows if r[2] >= threshold]


def draw(img, rows, threshold, names):
    """The image (as BGR, enlarged to DRAW_SIZE pixels on its short side) with each box and
    'name score' drawn."""
    img = _to_channels(img, 3)
    scale = max(1.0, DRAW_SIZE / min(img.shape[:2]))
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale > 1 else img.copy()
    h, w = img.shape[:2]
    for r in rows:
        if r[2] < threshold:
            continue
        label = int(r[1])
        colour = COLOURS[label % len(COLOURS)]
        x0, y0, x1, y1 = (int(v) for v in (r[3] * w, r[4] * h, r[5] * w, r[6] * h))
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, 2)
        text = f"{names.get(label, label)} {r[2]:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        tx, ty = min(max(x0, 0), w - tw - 2), max(y0, th + 4)  # the label inside the picture
        cv2.rectangle(img, (tx, ty - th - 4), (tx + tw + 2, ty), colour, -1)
        cv2.putText(img, text, (tx + 1, ty - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def tile(images, columns=4):
    """The images side by side in rows of ``columns``, each padded to the largest, on white."""
    h = max(i.shape[0] for i in images) + 4
    w = max(i.shape[1] for i in images) + 4
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    out = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for k, img in enumerate(images):
        y, x = (k // columns) * h + 2, (k % columns) * w + 2
        out[y:y + img.shape[0], x:x + img.shape[1]] = img
    return out


def write_image(path, img):
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    if not cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 9]):  # OpenCV's default is 1
        raise CaffeError(f"{path}: cannot write the image (unknown extension or unwritable folder)")


def label_names(path):
    if not path:
        return {}
    return {item.label: item.display_name or item.name for item in read_label_map(path).item}


def run(argv):
    args = parser().parse(argv)
    paths = image_paths(args.input)
    names = label_names(args.label_map_file)
    detector = SSDDetector(args.model_file, args.weights_file, (args.mean_file, args.mean_value),
                           args.normalize_value, device_for(parse_gpu(args.gpu)))
    try:
        out = open(args.out_file, "w") if args.out_file else None
    except OSError as e:
        raise CaffeError(f"{args.out_file}: cannot write the detections: {e.strerror}") from None
    drawn = []
    try:
        for path in paths:
            img = read_image(path)
            rows = detector.detect(img)
            for line in box_lines(path, img, rows, args.confidence_threshold):
                print(line, file=out)
            if args.draw_dir or args.tile:
                drawn.append(draw(img, rows, args.confidence_threshold, names))
            if args.draw_dir:
                write_image(os.path.join(args.draw_dir, os.path.basename(path)), drawn[-1])
    finally:
        if out:
            out.close()
    if args.tile and drawn:
        write_image(args.tile, tile(drawn))
    return 0
