"""The SSD fork's NormalizedBBox arithmetic (src/caffe/util/bbox_util.cpp, im_transforms.cpp) in
float32, operation for operation, on arrays of boxes.

A box is a row ``[xmin, ymin, xmax, ymax]`` of an (N, 4) float32 array, in fractions of the
image. The fork's boxes may carry a stored ``size`` (ClipBBox and ScaleBBox store one, and
BBoxSize returns it instead of computing width * height): here an (N,) float32 array with
NaN where none is stored. The stored size matters where a box is moved without its size being
updated (a box resized for the emit constraint keeps its old size).
"""
import numpy as np

F = np.float32


def unset_sizes(n):
    """(n,) NaN: no stored sizes."""
    return np.full(n, np.nan, np.float32)


def bbox_size(boxes, sizes=None):
    """BBoxSize of normalized boxes: 0 for an inverted box, else the stored size, else w * h."""
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    computed = w * h
    if sizes is not None:
        computed = np.where(np.isnan(sizes), computed, sizes)
    return np.where((w < 0) | (h < 0), F(0), computed)


def clip(boxes):
    """ClipBBox: (boxes clamped to [0, 1], their sizes, now stored)."""
    clipped = np.clip(boxes, F(0), F(1)).astype(np.float32)
    return clipped, bbox_size(clipped)


def project(src, boxes):
    """ProjectBBox of ``boxes`` into the frame of box ``src`` (4,): (projected and clipped boxes,
    their stored sizes, whether each is kept: it meets ``src`` and keeps a positive size)."""
    meets = ~((boxes[:, 0] >= src[2]) | (boxes[:, 2] <= src[0]) |
              (boxes[:, 1] >= src[3]) | (boxes[:, 3] <= src[1]))
    width, height = F(src[2] - src[0]), F(src[3] - src[1])
    origin = np.array([src[0], src[1], src[0], src[1]], np.float32)
    scale = np.array([width, height, width, height], np.float32)
    projected, sizes = clip(((boxes - origin) / scale).astype(np.float32))
    return projected, sizes, meets & (sizes > 0)


def _intersection(a, b):
    """Width and height (T, N) of the intersection of every box of ``a`` (T, 4) with every box of
    ``b`` (N, 4), and its size where both are positive, else 0 (IntersectBBox: boxes that do not
    meet give an empty box, and so do boxes that only touch)."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    meets = (w > 0) & (h > 0)
    return meets, np.where(meets, w * h, F(0))


def jaccard(a, b, b_sizes=None):
    """JaccardOverlap (normalized) of every box of ``a`` (T, 4) with every box of ``b`` (N, 4): (T, N)
    ``inter / (size_a + size_b - inter)``, 0 where the intersection has no positive width and height."""
    meets, inter = _intersection(a, b)
    union = (bbox_size(a)[:, None] + bbox_size(b, b_sizes)[None, :]) - inter
    return np.where(meets, inter / np.where(meets, union, F(1)), F(0))


def coverage(a, b, a_sizes=None):
    """BBoxCoverage: the share of each box of ``a`` (T, 4) that each box of ``b`` (N, 4) covers, (T, N)."""
    meets, inter = _intersection(a, b)
    size = bbox_size(a, a_sizes)[:, None]
    return np.where(meets, inter / np.where(meets, size, F(1)), F(0))


def meet_emit_constraint(src, boxes, sizes, constraint):
    """MeetEmitConstraint: which ``boxes`` an image cropped to ``src`` (4,) keeps. CENTER: the
    box's centre lies in ``src`` (edges included); MIN_OVERLAP: ``src`` covers more than
    ``emit_overlap`` of the box (by the box's stored size where it has one)."""
    if constraint.emit_type == constraint.CENTER:
        cx = ((boxes[:, 0] + boxes[:, 2]) / F(2)).astype(np.float32)
        cy = ((boxes[:, 1] + boxes[:, 3]) / F(2)).astype(np.float32)
        return (cx >= src[0]) & (cx <= src[2]) & (cy >= src[1]) & (cy <= src[3])
    return coverage(boxes, np.asarray(src, np.float32)[None, :], sizes)[:, 0] > F(constraint.emit_overlap)


def resized_frame(param, old_width, old_height):
    """(width, height) in float32 of the frame a resize_param maps an image of the given size to,
    before any padding: FIT_SMALL_SIZE stretches one side to keep the image's aspect ratio."""
    new_width, new_height = F(param.width), F(param.height)
    if param.resize_mode == param.FIT_SMALL_SIZE:
        aspect = F(F(old_width) / F(old_height))
        if aspect < F(new_width / new_height):
            new_height = F(new_width / aspect)
        else:
            new_width = F(aspect * new_height)
    return new_width, new_height


def update_by_resize_policy(param, old_width, old_height, boxes):
    """UpdateBBoxByResizePolicy: where ``boxes`` land in the resized image, normalized by its size.
    WARP and FIT_SMALL_SIZE scale each axis; FIT_LARGE_SIZE_AND_PAD scales to fit and shifts the
    padded axis by half the padding."""
    new_width, new_height = resized_frame(param, old_width, old_height)
    ow, oh = F(old_width), F(old_height)
    x = (boxes[:, [0, 2]] * ow).astype(np.float32)
    y = (boxes[:, [1, 3]] * oh).astype(np.float32)

    def warp(v, new, old):
        v = (v * new / old).astype(np.float32)
        return np.stack([np.maximum(F(0), v[:, 0]), np.minimum(new, v[:, 1])], axis=1)

    def pad(v, new, old, padding):
        v = (v * F(new - F(2) * padding) / old).astype(np.float32)
        return np.stack([padding + np.maximum(F(0), v[:, 0]), padding + np.minimum(new, v[:, 1])],
                        axis=1).astype(np.float32)

    if param.resize_mode == param.FIT_LARGE_SIZE_AND_PAD:
        orig_aspect = F(ow / oh)
        if orig_aspect > F(new_width / new_height):
            x, y = warp(x, new_width, ow), pad(y, new_height, oh, F((new_height - new_width / orig_aspect) / F(2)))
        else:
            x, y = pad(x, new_width, ow, F((new_width - orig_aspect * new_height) / F(2))), warp(y, new_height, oh)
    else:
        x, y = warp(x, new_width, ow), warp(y, new_height, oh)
    out = np.stack([x[:, 0] / new_width, y[:, 0] / new_height, x[:, 1] / new_width, y[:, 1] / new_height], axis=1)
    return out.astype(np.float32)


def extrapolate(param, height, width, crop, boxes):
    """ExtrapolateBBox: with FIT_SMALL_SIZE and both height_scale and width_scale set, boxes are
    rescaled from the crop's size in the resized frame to (width_scale, height_scale); else unchanged."""
    if not (param.height_scale > 0 and param.width_scale > 0 and param.resize_mode == param.FIT_SMALL_SIZE):
        return boxes
    resize_width, resize_height = resized_frame(param, width, height)
    crop_height = F(resize_height * F(crop[3] - crop[1]))
    crop_width = F(resize_width * F(crop[2] - crop[0]))
    x = (boxes[:, [0, 2]] * crop_width / F(param.width_scale)).astype(np.float32)
    y = (boxes[:, [1, 3]] * crop_height / F(param.height_scale)).astype(np.float32)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
