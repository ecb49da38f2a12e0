"""The SSD fork's image operations (src/caffe/util/im_transforms.cpp, data_transformer.cpp) on
(H, W, C) uint8 images as OpenCV holds them, each applying choices already drawn (plan.py).

Where the fork works on encoded Datums it decodes, changes and encodes the image again as JPEG
(OpenCV's default quality 95) after each of distortion, expansion and cropping; :func:`reencode`
does the same, so those images carry the same compression losses.
"""
import math

import cv2
import numpy as np

from protocaffe.errors import CaffeError

F = np.float32
INTERPOLATIONS = {"LINEAR": cv2.INTER_LINEAR, "AREA": cv2.INTER_AREA, "NEAREST": cv2.INTER_NEAREST,
                  "CUBIC": cv2.INTER_CUBIC, "LANCZOS4": cv2.INTER_LANCZOS4}
PADS = {"CONSTANT": cv2.BORDER_CONSTANT, "MIRRORED": cv2.BORDER_REFLECT_101,
        "REPEAT_NEAREST": cv2.BORDER_REPLICATE}
RAW_EXPAND_FILL = 32
"""What the fork's ExpandImage puts around a raw (not encoded) Datum: its buffer starts as
spaces, and only the encoded path fills the mean."""


def hwc(img):
    """An image decoded or stored as (H, W) or (H, W, C), always with a channel axis."""
    return img[:, :, None] if img.ndim == 2 else img


def decode(data, flag, source):
    """cv::imdecode of an encoded Datum's bytes (``flag``: IMREAD_UNCHANGED as the fork's
    DecodeDatumToCVMatNative, or IMREAD_COLOR / IMREAD_GRAYSCALE with force_color / force_gray)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        raise CaffeError(f"{source}: an encoded Datum could not be decoded as an image")
    if img.dtype != np.uint8:
        raise CaffeError(f"{source}: an encoded image of type {img.dtype}; only 8-bit images are supported")
    return hwc(img)


def reencode(img):
    """The image through EncodeCVMatToDatum(img, "jpg") and the next stage's decode."""
    ok, buf = cv2.imencode(".jpg", img)
    if not ok:
        raise CaffeError(f"cannot encode a {img.shape} image as JPEG")
    return hwc(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))


def convert_to(img, alpha, beta):
    """cv::Mat::convertTo(img, -1, alpha, beta) on uint8: ``saturate_cast<uchar>(x * alpha + beta)``
    in float32, rounding halves to even."""
    table = np.rint(np.arange(256, dtype=np.float32) * F(alpha) + F(beta))
    return cv2.LUT(img, np.clip(table, 0, 255).astype(np.uint8))


def _hsv_channel(img, channel, alpha, beta):
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, channel] = convert_to(np.ascontiguousarray(hsv[:, :, channel]), alpha, beta)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def distort(img, steps):
    """ApplyDistort's chosen steps, in order: ("brightness", delta), ("contrast", factor),
    ("saturation", factor), ("hue", delta), ("order", channel permutation)."""
    if img.shape[2] != 3:
        raise CaffeError(f"distort_param works on colour images, found one with {img.shape[2]} channels")
    for kind, value in steps:
        if kind == "brightness" and abs(value) > 0:
            img = convert_to(img, 1, value)
        elif kind == "contrast" and abs(value - F(1)) > F(1e-3):
            img = convert_to(img, value, 0)
        elif kind == "saturation":
            img = _hsv_channel(img, 1, value, 0)
        elif kind == "hue" and abs(value) > 0:
            img = _hsv_channel(img, 0, 1, value)
        elif kind == "order":
            img = np.ascontiguousarray(img[:, :, list(value)])
    return img


def expand(img, height, width, top, left, fill):
    """ExpandImage: the image at (top, left) of a ``height`` x ``width`` canvas of ``fill``
    (one value per channel)."""
    bottom, right = height - top - img.shape[0], width - left - img.shape[1]
    value = [int(v) for v in np.broadcast_to(fill, (img.shape[2],))]
    return hwc(cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value))


def crop_window(box, height, width):
    """(x, y, w, h) in pixels of CropImage's window for a normalized box: the box clipped to the
    image and scaled in float32, its corner and size truncated (the size from the scaled width)."""
    clipped = np.clip(np.asarray(box, np.float32), F(0), F(1))
    x0, y0 = F(clipped[0] * F(width)), F(clipped[1] * F(height))
    x1, y1 = F(clipped[2] * F(width)), F(clipped[3] * F(height))
    return int(x0), int(y0), int(F(x1 - x0)), int(F(y1 - y0))


def resized_size(param, height, width):
    """(height, width) after ApplyResize of a ``height`` x ``width`` image (InferNewSize)."""
    if param.resize_mode == param.FIT_SMALL_SIZE:
        aspect = F(F(width) / F(height))
        if aspect < F(F(param.width) / F(param.height)):
            return int(F(F(param.width) / aspect)), param.width
        return param.height, int(F(aspect * F(param.height)))
    return param.height, param.width


def resize(img, param, interpolation):
    """ApplyResize with an interpolation already drawn: WARP stretches to height x width;
    FIT_LARGE_SIZE_AND_PAD fits the longer side and pads the other (pad_mode, pad_value) evenly,
    the odd pixel at the end; FIT_SMALL_SIZE fits the shorter side and keeps the aspect ratio."""
    h, w = img.shape[:2]
    aspect = F(F(w) / F(h))
    if param.resize_mode == param.WARP:
        out = cv2.resize(img, (param.width, param.height), interpolation=interpolation)
    elif param.resize_mode == param.FIT_SMALL_SIZE:
        rh, rw = resized_size(param, h, w)
        out = cv2.resize(img, (rw, rh), interpolation=interpolation)
    else:
        values = list(param.pad_value) or [0]
        if len(values) not in (1, img.shape[2]):
            raise CaffeError(f"resize_param: specify 1 pad_value or {img.shape[2]} (one per channel), "
                             f"found {len(values)}")
        value = (values * 4)[:4] if len(values) == 1 else values + [0] * (4 - len(values))
        border = PADS[param.Pad_mode.Name(param.pad_mode)]
        if aspect > F(F(param.width) / F(param.height)):
            rh = math.floor(F(F(param.width) / aspect))
            out = cv2.resize(img, (param.width, rh), interpolation=interpolation)
            pad = math.floor((param.height - rh) / 2.0)
            out = cv2.copyMakeBorder(out, pad, param.height - rh - pad, 0, 0, border, value=value)
        else:
            rw = math.floor(F(aspect * F(param.height)))
            out = cv2.resize(img, (rw, param.height), interpolation=interpolation)
            pad = math.floor((param.width - rw) / 2.0)
            out = cv2.copyMakeBorder(out, 0, 0, pad, param.width - rw - pad, border, value=value)
    return hwc(out)


def noise(img, param, salt):
    """ApplyNoise: the effects set in noise_param, in the fork's order (decolorize, gauss_blur,
    hist_eq, clahe, jpeg, erode, posterize, inverse, saltpepper, convert_to_hsv); ``salt`` is
    the (columns, rows) of the salt-and-pepper pixels drawn. Like the fork, ``prob`` is not read."""
    color = img.shape[2] == 3
    if param.decolorize:
        img = hwc(cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR))
    if param.gauss_blur:
        img = hwc(cv2.GaussianBlur(img, (7, 7), 1.5))
    for on, make in ((param.hist_eq, lambda: cv2.equalizeHist),
                     (param.clahe, lambda: cv2.createCLAHE(clipLimit=4).apply)):
        if on:
            img = _luma(img, make(), color)
    if param.jpeg > 0:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(param.jpeg)])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if param.erode:
        img = hwc(cv2.erode(img, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3), (1, 1))))
    if param.posterize:
        img = cv2.LUT(img, (np.arange(256) // 64 * 64 + 32).astype(np.uint8))
    if param.inverse:
        img = 255 - img
    if param.saltpepper:
        values = list(param.saltpepper_param.value)
        if len(values) not in (1, img.shape[2]):
            raise CaffeError(f"noise_param: specify 1 saltpepper value or {img.shape[2]}, found {len(values)}")
        img = img.copy()
        img[salt[1], salt[0]] = np.asarray(values * img.shape[2] if len(values) == 1 else values, np.float32
                                           ).astype(np.uint8)
    if param.convert_to_hsv:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    return hwc(img)


def _luma(img, equalize, color):
    """``equalize`` applied to the Y channel of YCrCb (colour) or to the gray image."""
    if not color:
        return hwc(equalize(img[:, :, 0]))
    ycrcb = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)
    ycrcb[:, :, 0] = equalize(np.ascontiguousarray(ycrcb[:, :, 0]))
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
