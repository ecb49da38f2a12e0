"""``protocaffe classify INPUT OUTPUT.npy``: pycaffe's python/classify.py, same flags.

INPUT is an image, a folder of images (``--ext``) or a .npy of images; the class
probabilities (N, C) are saved to OUTPUT with numpy.save.
"""
import argparse
import glob
import os
import time

import numpy as np

from protocaffe import io
from protocaffe.errors import CaffeError
from protocaffe.pycaffe import set_mode_cpu, set_mode_gpu


def parser():
    p = argparse.ArgumentParser(prog="protocaffe classify", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input_file", help="Input image, directory, or npy.")
    p.add_argument("output_file", help="Output npy filename.")
    p.add_argument("--model_def", default="models/bvlc_reference_caffenet/deploy.prototxt",
                   help="Model definition file.")
    p.add_argument("--pretrained_model",
                   default="models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel",
                   help="Trained model weights file.")
    p.add_argument("--gpu", action="store_true", help="Switch for gpu computation.")
    p.add_argument("--center_only", action="store_true",
                   help="Predict from the center crop alone instead of averaging over ten crops.")
    p.add_argument("--images_dim", default="256,256", help="Canonical 'height,width' of input images.")
    p.add_argument("--mean_file", default="python/caffe/imagenet/ilsvrc_2012_mean.npy",
                   help="Image mean (.npy, Channels x Height x Width); '' for no mean subtraction.")
    p.add_argument("--input_scale", type=float, help="Multiply input features by this scale last.")
    p.add_argument("--raw_scale", type=float, default=255.0,
                   help="Multiply raw input by this scale before preprocessing.")
    p.add_argument("--channel_swap", default="2,1,0", help="Order to permute input channels (RGB -> BGR).")
    p.add_argument("--ext", default="jpg", help="Image extension to take when INPUT is a directory.")
    return p


def _load_npy(path, what):
    if not os.path.isfile(path):
        raise CaffeError(f"{path}: no such file ({what})")
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise CaffeError(f"{path}: not a .npy array ({what}): {str(e).splitlines()[0]}") from None


def load_inputs(path, ext):
    """Images from a .npy, a folder (``*.ext``) or one image file."""
    path = os.path.expanduser(path)
    if path.endswith("npy"):
        print(f"Loading file: {path}")
        return _load_npy(path, "input images")
    if os.path.isdir(path):
        print(f"Loading folder: {path}")
        return [io.load_image(f) for f in sorted(glob.glob(os.path.join(path, "*." + ext)))]
    print(f"Loading file: {path}")
    return [io.load_image(path)]


def run(argv):
    from protocaffe.classifier import Classifier
    args = parser().parse_args(argv)
    mean = _load_npy(args.mean_file, "--mean_file; give --mean_file '' for none") if args.mean_file else None
    channel_swap = [int(s) for s in args.channel_swap.split(",")] if args.channel_swap else None
    if args.gpu:
        set_mode_gpu()
        print("GPU mode")
    else:
        set_mode_cpu()
        print("CPU mode")
    classifier = Classifier(args.model_def, args.pretrained_model,
                            image_dims=[int(s) for s in args.images_dim.split(",")], mean=mean,
                            input_scale=args.input_scale, raw_scale=args.raw_scale,
                            channel_swap=channel_swap)
    inputs = load_inputs(args.input_file, args.ext)
    if not len(inputs):
        raise CaffeError(f"{args.input_file}: no input images found")
    print(f"Classifying {len(inputs)} inputs.")
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print(f"Done in {time.time() - start:.2f} s.")
    print(f"Saving results into {args.output_file}")
    np.save(args.output_file, predictions)
    return 0
