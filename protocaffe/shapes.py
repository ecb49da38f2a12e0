"""Caffe's output-size arithmetic for convolution and pooling: pure integer code."""
import math


def conv_out(size, kernel, stride, pad, dilation=1):
    """Convolution output size: ``(size + 2 pad - (dilation (kernel - 1) + 1)) / stride + 1`` in
    C++ integer division, which truncates toward zero: a window that overhangs the padded
    input by less than a stride still gives one output, reading zeros past the end (as
    Caffe's im2col does; see :func:`conv_overhang`)."""
    span = size + 2 * pad - (dilation * (kernel - 1) + 1)
    return (span // stride if span >= 0 else -(-span // stride)) + 1


def conv_overhang(size, kernel, pad, dilation=1):
    """Zeros to add after the padded input so that a window larger than it fits (0 if it fits)."""
    return max(0, dilation * (kernel - 1) + 1 - (size + 2 * pad))


def deconv_out(size, kernel, stride, pad, dilation=1):
    """Deconvolution output size: ``stride (size - 1) + dilation (kernel - 1) + 1 - 2 pad``."""
    extent = dilation * (kernel - 1) + 1
    return stride * (size - 1) + extent - 2 * pad


def pool_out(size, kernel, stride, pad, ceil=True, *, padded=None):
    """Pooling output size as Caffe computes it.

    ``ceil((size + 2 pad - kernel) / stride) + 1`` (``floor`` for round_mode
    FLOOR); then, when the layer is ``padded`` (a non-zero pad on either axis,
    Caffe's ``pad_h || pad_w``; by default this axis's ``pad``) and the last
    window would start at or past ``size + pad``, that window is dropped. The
    rule applies to an unpadded axis too when the other one is padded.
    PyTorch's ``ceil_mode`` drops a window starting in the right padding too,
    but not by this rule in every case, so protocaffe pads explicitly.
    """
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if (pad > 0 if padded is None else padded) and (out - 1) * stride >= size + pad:
        out -= 1
    return out
