"""The SSD fork's detection layers: PriorBox, DetectionOutput, DetectionEvaluate.

None has a backward. DetectionOutput and DetectionEvaluate decide on the host (NumPy, in
float32 as the fork computes; protocaffe.bbox) and return rows whose number depends on
the data: their ``top_shapes`` give the placeholder Caffe's Reshape gives before any data.
"""
import numpy as np
import torch

from protocaffe import bbox
from protocaffe.layer_types.base import Layer, count, register

F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)


@register
class PriorBox(Layer):
    """Default boxes: feature map (N, C, H, W), image (N, C', H', W') -> (1, 2, H*W*K*4).

    Channel 0 holds the boxes [xmin, ymin, xmax, ymax] in image fractions, cell by cell
    (rows, then columns) and K per cell: for each min_size its square, the square of
    sqrt(min_size * max_size) if max sizes are given, then one box per aspect ratio other
    than 1. Channel 1 holds their variances. Ratios: 1, then each given ratio unless within
    1e-6 of one kept, followed by its inverse with ``flip``. The centre of cell (h, w) is
    ((w + offset) * step_w, (h + offset) * step_h); without a step the step is the image size
    over the map size. The image size is img_size / img_h, img_w, else the image bottom's.
    As in the fork, min_size and max_size act as integers (7.8 acts as 7). ``clip`` clips
    the boxes to [0, 1]. Only the bottoms' sizes are read.
    """
    type = "PriorBox"
    num_bottoms = 2

    def setup(self, bottom_shapes):
        p = self.layer_param("prior_box_param")
        if not len(p.min_size) or min(p.min_size) <= 0:
            raise self.error(f"prior_box_param needs positive min_size values, found {list(p.min_size)}")
        if len(p.max_size) and len(p.max_size) != len(p.min_size):
            raise self.error(f"give one max_size per min_size, found {len(p.max_size)} for {len(p.min_size)}")
        if any(hi <= lo for lo, hi in zip(p.min_size, p.max_size)):
            raise self.error(f"each max_size must exceed its min_size, found {list(p.min_size)} and "
                             f"{list(p.max_size)}")
        if len(p.variance) not in (0, 1, 4) or any(v <= 0 for v in p.variance):
            raise self.error(f"give one or four positive variances, found {list(p.variance)}")
        if p.HasField("img_size") and (p.HasField("img_h") or p.HasField("img_w")):
            raise self.error("give img_size or img_h/img_w, not both")
        if p.HasField("step") and (p.HasField("step_h") or p.HasField("step_w")):
            raise self.error("give step or step_h/step_w, not both")
        ratios = [F32(1)]
        for r in p.aspect_ratio:
            if all(abs(F32(r) - k) >= 1e-6 for k in ratios):
                ratios += [F32(r)] + ([F32(1.0 / float(F32(r)))] if p.flip else [])
        self.ratios = [r for r in ratios if abs(float(r) - 1.0) >= 1e-6]
        self.p = p
        self.per_cell = len(ratios) * len(p.min_size) + len(p.max_size)
        self.image = (p.img_h or p.img_size, p.img_w or p.img_size)
        self.step = (p.step_h or p.step, p.step_w or p.step)
        self.variance = list(p.variance) or [0.1]

    def top_shapes(self, bottom_shapes):
        return [(1, 2, count(bottom_shapes[0][2:4]) * self.per_cell * 4)]

    def boxes(self, height, width, img_h, img_w):
        """The top as a float32 array for a height x width map of an img_h x img_w image."""
        p = self.p
        if self.image[0] and self.image[1]:
            img_h, img_w = self.image
        step_h, step_w = (F32(self.step[0]), F32(self.step[1])) if self.step[0] and self.step[1] else \
            (F32(img_h) / F32(height), F32(img_w) / F32(width))
        sides = []  # (width, height) of each box of a cell
        for s, lo in enumerate(p.min_size):
            lo = int(lo)
            sides.append((F32(lo), F32(lo)))
            if len(p.max_size):
                side = F32(np.sqrt(float(lo * int(p.max_size[s]))))
                sides.append((side, side))
            sides += [(F32(lo) * np.sqrt(r), F32(lo) / np.sqrt(r)) for r in self.ratios]
        w, h = np.array(sides, np.float64).T
        cx = ((np.arange(width, dtype=F32) + F32(p.offset)) * step_w).astype(np.float64)
        cy = ((np.arange(height, dtype=F32) + F32(p.offset)) * step_h).astype(np.float64)
        cx, cy = cx[None, :, None], cy[:, None, None]
        out = np.stack(np.broadcast_arrays((cx - w / 2) / img_w, (cy - h / 2) / img_h,
                                           (cx + w / 2) / img_w, (cy + h / 2) / img_h), -1).astype(F32)
        if p.clip:
            out = np.clip(out, F32(0), F32(1))
        variances = np.broadcast_to(np.array(self.variance, F32), out.shape)
        return np.stack([out.reshape(-1), variances.reshape(-1)])[None]

    def forward(self, feature, image):
        out = self.boxes(feature.shape[2], feature.shape[3], image.shape[2], image.shape[3])
        return torch.from_numpy(out).to(device=feature.device, dtype=feature.dtype)


def rows_tensor(rows, width, like):
    """Detection rows as a (1, 1, R, width) tensor on ``like``'s device and dtype."""
    out = np.asarray(rows, F32).reshape(1, 1, -1, width)
    return torch.from_numpy(out).to(device=like.device, dtype=like.dtype)


@register
class DetectionOutput(Layer):
    """Decoding and NMS: loc (N, P*L*4), conf (N, P*C) probabilities, priors (1, 2, P*4)
    -> (1, 1, D, 7) rows [image, label, score, xmin, ymin, xmax, ymax].

    L is 1 with ``share_location``, else C. Per image and class other than the background,
    the boxes decoded per ``code_type`` (not clipped) go through NMS (scores above
    ``confidence_threshold``, the best ``top_k``, overlap ``nms_threshold`` with ``eta``);
    if more than ``keep_top_k`` survive, the image keeps its best keep_top_k over all
    classes. Rows go by image, then label, then descending score. When nothing is kept in
    the whole batch there is one row [image, -1, -1, -1, -1, -1, -1] per image. Saving
    detections to files (``save_output_param.output_directory``) and ``visualize`` are not
    supported. The top's shape before data is (1, 1, 1, 7), as in Caffe.
    """
    type = "DetectionOutput"
    num_bottoms = (3, 4)
    shape_from_data = True

    def setup(self, bottom_shapes):
        p = self.layer_param("detection_output_param")
        if not p.HasField("num_classes"):
            raise self.error("detection_output_param needs num_classes")
        if p.share_location and p.background_label_id == -1:
            raise self.error("background_label_id -1 needs share_location: false (the fork takes the "
                             "shared label -1 for the background and aborts)")
        if p.nms_param.nms_threshold < 0 or not 0 < p.nms_param.eta <= 1:
            raise self.error(f"needs nms_threshold >= 0 and eta in (0, 1], found "
                             f"{p.nms_param.nms_threshold} and {p.nms_param.eta}")
        if p.save_output_param.output_directory:
            raise self.error("saving detections (save_output_param.output_directory) is not supported; "
                             "remove output_directory and read the top instead")
        if p.visualize:
            raise self.error("visualize is not supported; draw the top's rows instead (protocaffe detect)")
        self.p = p
        self.loc_classes = 1 if p.share_location else p.num_classes
        self.threshold = p.confidence_threshold if p.HasField("confidence_threshold") else -FLT_MAX
        self.top_k = p.nms_param.top_k if p.nms_param.HasField("top_k") else -1
        loc, conf, priors = bottom_shapes[:3]
        self.priors = count(priors, 2) // 4 if len(priors) > 2 else 0
        for name, shape, per in (("loc", loc, self.loc_classes * 4), ("conf", conf, p.num_classes)):
            if count(shape, 1) != self.priors * per:
                raise self.error(f"{name} must hold {per} values per prior for {self.priors} priors "
                                 f"({self.priors * per} per image), found shape {shape}")

    def top_shapes(self, bottom_shapes):
        return [(1, 1, 1, 7)]

    def detect(self, loc, conf, priors):
        """The rows for NumPy loc (N, P, L, 4), conf (N, P, C) and priors (2, P, 4)."""
        p, rows = self.p, []
        for i in range(len(loc)):
            decoded = bbox.decode(priors[0], priors[1], loc[i].transpose(1, 0, 2), p.code_type,
                                  p.variance_encoded_in_target)
            kept = {}
            for c in range(p.num_classes):
                if c != p.background_label_id:
                    boxes = decoded[0 if p.share_location else c]
                    kept[c] = bbox.nms_fast(boxes, conf[i, :, c], self.threshold, p.nms_param.nms_threshold,
                                            p.nms_param.eta, self.top_k)
            if -1 < p.keep_top_k < sum(map(len, kept.values())):
                best = sorted(((c, j) for c, idx in kept.items() for j in idx), key=lambda cj: -conf[i, cj[1], cj[0]])
                kept = {c: [j for k, j in best[:p.keep_top_k] if k == c] for c in kept}
            for c, idx in kept.items():
                boxes = decoded[0 if p.share_location else c]
                rows += [[i, c, conf[i, j, c], *boxes[j]] for j in idx]
        return rows or [[i, -1, -1, -1, -1, -1, -1] for i in range(len(loc))]

    def forward(self, loc, conf, priors, *image):
        n, c = loc.shape[0], self.p.num_classes
        rows = self.detect(loc.detach().cpu().numpy().reshape(n, self.priors, self.loc_classes, 4).astype(F32),
                           conf.detach().cpu().numpy().reshape(n, self.priors, c).astype(F32),
                           priors.detach().cpu().numpy().reshape(2, self.priors, 4).astype(F32))
        return rows_tensor(rows, 7, conf)


@register
class DetectionEvaluate(Layer):
    """True and false positives: detections (1, 1, D, 7) as DetectionOutput gives them,
    gt (1, 1, G, 8) rows [image, label, instance, xmin, ymin, xmax, ymax, difficult]
    -> (1, 1, R, 5).

    First one row [-1, label, number of gt boxes, -1, -1] per class other than the
    background, then per image and label rows [image, label, score, tp, fp]. Where the image
    has gt of that label the detections go by descending score, each taking the gt box it
    overlaps most: a true positive if the overlap reaches ``overlap_threshold`` and the box is
    still free, else a false positive; with ``evaluate_difficult_gt`` false a detection whose
    box is difficult gets tp = fp = 0 and difficult boxes are not counted. Reading gt stops
    at the first row of image -1 (the fork's rule here). With ``name_size_file`` (lines
    "name height width", read from the working directory) boxes are clipped and scaled to
    the pixels of each image in turn (the file's lines are taken one per image of each
    batch, cycling across batches), and overlaps use the +1 pixel convention.
    """
    type = "DetectionEvaluate"
    num_bottoms = 2
    shape_from_data = True

    def setup(self, bottom_shapes):
        p = self.layer_param("detection_evaluate_param")
        if not p.HasField("num_classes"):
            raise self.error("detection_evaluate_param needs num_classes")
        if p.overlap_threshold <= 0:
            raise self.error(f"overlap_threshold must be positive, found {p.overlap_threshold}")
        if p.HasField("resize_param"):
            raise self.error("resize_param (boxes of resized images) is not supported")
        for name, shape, width in (("detections", bottom_shapes[0], 7), ("gt", bottom_shapes[1], 8)):
            if len(shape) != 4 or shape[:2] != (1, 1) or shape[3] != width:
                raise self.error(f"{name} must have shape (1, 1, rows, {width}), found {shape}")
        self.p = p
        self.classes = [c for c in range(p.num_classes) if c != p.background_label_id]
        self.sizes = self._read_sizes(p.name_size_file) if p.HasField("name_size_file") else []
        self.next_size = 0

    def _read_sizes(self, path):
        try:
            with open(path) as f:
                words = f.read().split()
        except OSError as e:
            raise self.error(f"cannot read name_size_file '{path}': {e.strerror}") from None
        return [(int(words[k + 1]), int(words[k + 2])) for k in range(0, len(words) - 2, 3)]

    def top_shapes(self, bottom_shapes):
        return [(1, 1, len(self.classes) + bottom_shapes[0][2], 5)]

    def _ground_truth(self, rows):
        """{image: {label: (boxes (G, 4), difficult (G,))}}, up to the first row of image -1."""
        found = {}
        for row in rows:
            if int(row[0]) == -1:
                break
            label = int(row[1])
            if label == self.p.background_label_id:
                raise self.error(f"ground truth of image {int(row[0])} has the background label {label}")
            boxes, hard = found.setdefault(int(row[0]), {}).setdefault(label, ([], []))
            boxes.append(row[3:7])
            hard.append(bool(row[7]))
        return {i: {c: (np.array(b, F32), np.array(d)) for c, (b, d) in per.items()} for i, per in found.items()}

    def evaluate(self, det, gt):
        """The rows for NumPy detections (D, 7) and gt (G, 8)."""
        p = self.p
        truth = self._ground_truth(gt)
        detections = {}
        for row in det:
            if int(row[0]) != -1:
                if int(row[1]) == p.background_label_id:
                    raise self.error(f"detections of image {int(row[0])} have the background label")
                detections.setdefault(int(row[0]), {}).setdefault(int(row[1]), []).append(row)
        count_of = {}
        for per in truth.values():
            for c, (_, hard) in per.items():
                count_of[c] = count_of.get(c, 0) + (len(hard) if p.evaluate_difficult_gt else int((~hard).sum()))
        rows = [[-1, c, count_of.get(c, 0), -1, -1] for c in self.classes]
        for image in sorted(detections):
            for label in sorted(detections[image]):
                found = detections[image][label]
                if label == -1:
                    continue
                if label not in truth.get(image, {}):
                    rows += [[image, label, d[2], 0, 1] for d in found]
                    continue
                rows += self._match(image, label, found, *truth[image][label])
            if self.sizes:
                self.next_size = (self.next_size + 1) % len(self.sizes)
        width = len(self.classes) + sum(int(r[1]) != -1 for r in det)
        return rows + [[0] * 5] * (width - len(rows))

    def _match(self, image, label, found, boxes, hard):
        p = self.p
        found = sorted(found, key=lambda d: -d[2])
        dets = np.array([d[3:7] for d in found], F32)
        pixels = bool(self.sizes)
        if pixels:
            height, width = self.sizes[self.next_size]
            boxes, dets = bbox.to_pixels(boxes, height, width), bbox.to_pixels(dets, height, width)
        overlaps = bbox.jaccard(dets, boxes, pixels)
        taken, rows = np.zeros(len(boxes), bool), []
        for d, ov in zip(found, overlaps):
            j = int(np.argmax(ov))
            tp = fp = 0
            if ov[j] < F32(p.overlap_threshold):
                fp = 1
            elif p.evaluate_difficult_gt or not hard[j]:
                tp, fp, taken[j] = int(not taken[j]), int(taken[j]), True
            rows.append([image, label, d[2], tp, fp])
        return rows

    def forward(self, det, gt):
        rows = self.evaluate(det.detach().cpu().numpy().reshape(-1, 7).astype(F32),
                             gt.detach().cpu().numpy().reshape(-1, 8).astype(F32))
        return rows_tensor(rows, 5, det)
