"""The SSD fork's training losses: SmoothL1Loss and MultiBoxLoss.

MultiBoxLoss decides on the host, per batch and from the current predictions, which
priors are positives (matched to a ground-truth box) and which are negatives (mined), as
the fork does (``util/bbox_util.cpp``: FindMatches, MineHardExamples, EncodeLocPrediction,
EncodeConfPrediction). The loss itself is then written in torch over the chosen rows, so
autograd gives the fork's gradients: the location term through SmoothL1 or L2, the
confidence term through softmax or logistic cross-entropy, both divided by the normalizer.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from protocaffe import bbox
from protocaffe.layer_types.base import Layer, count, register
from protocaffe.layer_types.loss import FLT_MIN, _floored_log, _Loss, normalization_mode, normalizer
from protocaffe.log import LOGGER as log
from protocaffe.proto.forks import faster_rcnn_pb2, ssd_pb2  # noqa: F401 (faster_rcnn: smooth_l1_loss_param)

MultiBox = ssd_pb2.MultiBoxLossParameter
F32 = np.float32


def smooth_l1(d, sigma2=1.0):
    """0.5 sigma2 d^2 where |d| < 1 / sigma2, |d| - 0.5 / sigma2 elsewhere; its gradient
    sigma2 d, then sign(d). The SSD fork's is sigma2 = 1; Faster R-CNN's takes sigma^2."""
    return torch.where(d.abs() < 1 / sigma2, 0.5 * d * d * sigma2, d.abs() - 0.5 / sigma2)


def _on(array, like, dtype=None):
    """A host array as a tensor on ``like``'s device (in ``dtype`` if given)."""
    return torch.as_tensor(array, device=like.device, dtype=dtype)


def _smooth_l1_np(d):
    d = np.asarray(d, F32)
    return np.where(np.abs(d) < 1, F32(0.5) * d * d, np.abs(d) - F32(0.5)).astype(F32)


@register
class SmoothL1Loss(_Loss):
    """SmoothL1Loss of the SSD fork and of Faster R-CNN's Caffe: a, b (N, ...) with equal
    counts per item, optionally inside and outside weights w_in, w_out shaped like a -> ().

    sum(w_out * smooth_l1(w_in * (a - b), sigma^2)) / N, with ``smooth_l1_loss_param.sigma``
    (Faster R-CNN's; 1 where unset, which is SSD's layer) and the weights where given (bottoms
    3 and 4 come together, as Faster R-CNN checks). a and b get gradients (b's is minus a's);
    the weights get none, as in both forks. SSD's code reads a third bottom but its LossLayer
    count of two refuses it: a net for SSD has two bottoms here.
    """
    type = "SmoothL1Loss"
    num_bottoms = (2, 4)

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        a, b = bottom_shapes[:2]
        if count(a, 1) != count(b, 1):
            raise self.error(f"bottoms must have the same count per item, found shapes {a} and {b}")
        if len(bottom_shapes) == 3:
            raise self.error("takes 2 bottoms (prediction, target) or 4 (and inside, outside weights), found 3")
        for name, shape in zip(("inside", "outside"), bottom_shapes[2:]):
            if count(shape) != count(a):
                raise self.error(f"{name} weights need the prediction's count {count(a)}, found shape {shape}")
        self.sigma2 = self.layer_param("smooth_l1_loss_param").sigma ** 2

    def elementwise(self, a, b, *weights):
        """The loss of each element, before the sum over all and the division by N."""
        d = a - b.reshape(a.shape)
        if not weights:
            return smooth_l1(d, self.sigma2)
        inside, outside = (w.detach().reshape(a.shape) for w in weights)
        return outside * smooth_l1(inside * d, self.sigma2)

    def forward(self, a, b, *weights):
        return self.elementwise(a, b, *weights).sum() / a.shape[0]


@dataclass
class Targets:
    """What the host decided for one batch.

    loc: (M, 3) (image, prior, location class) of the positives, in the fork's order;
    loc_target (M, 4) their encoded ground truth; loc_scale (M, 4) the divisor of the
    prediction (the variance with encode_variance_in_target, else 1); loc_free (M, 4) False
    where bp_inside replaces the prediction by its target (no loss, no gradient).
    conf: (K, 2) (image, prior) of the rows scored, or None for every prior of every image;
    conf_target: class indices (SOFTMAX) or per-class targets (LOGISTIC) of those rows.
    """
    loc: np.ndarray
    loc_target: np.ndarray
    loc_scale: np.ndarray
    loc_free: np.ndarray
    conf: object
    conf_target: np.ndarray
    num_matches: int


@register
class MultiBoxLoss(Layer):
    """SSD's loss: loc (N, P*L*4), conf (N, P*C), priors (1, 2, P*4), gt (1, 1, G, 8) -> ().

    L is 1 with ``share_location``, else C. gt rows are [image, label, instance, xmin, ymin,
    xmax, ymax, difficult]; rows with image -1 are skipped. Priors (or, without
    ``use_prior_for_matching``, the decoded predictions) are matched to the gt boxes
    (BIPARTITE, then PER_PREDICTION above ``overlap_threshold``); mining then picks negatives
    (MAX_NEGATIVE: the highest confidence losses among unmatched priors overlapping less than
    ``neg_overlap``, ``neg_pos_ratio`` per positive) or hard examples (HARD_EXAMPLE: the
    ``sample_size`` highest loc + conf losses, optionally after NMS). The loss is
    loc_weight * loc_loss / n + conf_loss / n with n from ``loss_param.normalization``
    (VALID: the number of positives); a term whose bottom has ``propagate_down: false`` is
    left out of the value too, as in the fork. priors and gt get no gradient. With
    ``encode_variance_in_target`` the loc gradient is that of the prediction divided by its
    variance, not multiplied by 1 / variance (the fork's backward).
    """
    type = "MultiBoxLoss"
    is_loss = True
    num_bottoms = 4

    def setup(self, bottom_shapes):
        p = self.layer_param("multibox_loss_param")
        if not p.HasField("num_classes"):
            raise self.error("multibox_loss_param needs num_classes")
        self.p, self.classes = p, p.num_classes
        self.loc_classes = 1 if p.share_location else p.num_classes
        self.mode = normalization_mode(self.param.loss_param)
        self.mining = p.mining_type != MultiBox.NONE
        if p.HasField("do_neg_mining"):
            log.warning("do_neg_mining is deprecated, use mining_type instead.")
            if p.do_neg_mining != self.mining:
                raise self.error(f"do_neg_mining {p.do_neg_mining} contradicts mining_type "
                                 f"{MultiBox.MiningType.Name(p.mining_type)}")
        if self.mining and not p.share_location:
            raise self.error("negative mining (mining_type other than NONE) needs share_location")
        softmax = p.conf_loss_type == MultiBox.SOFTMAX
        if softmax and not 0 <= p.background_label_id < p.num_classes:
            raise self.error(f"background_label_id {p.background_label_id} must be in [0, {p.num_classes}) "
                             "for SOFTMAX")
        if p.map_object_to_agnostic and p.num_classes != (2 if p.background_label_id >= 0 else 1):
            raise self.error("map_object_to_agnostic needs num_classes 2 (1 without a background)")
        loc, conf, priors = bottom_shapes[:3]
        self.priors = count(priors, 2) // 4 if len(priors) > 2 else 0
        if loc[:1] != conf[:1]:
            raise self.error(f"loc and conf must have the same first axis, found {loc} and {conf}")
        for name, shape, per in (("loc", loc, self.loc_classes * 4), ("conf", conf, self.classes)):
            if count(shape, 1) != self.priors * per:
                raise self.error(f"{name} must hold {per} values per prior for {self.priors} priors "
                                 f"({self.priors * per} per image), found shape {shape}")
        down = list(self.param.propagate_down) or [True, True]
        self.loc_term, self.conf_term = down[0], down[1]

    def top_shapes(self, bottom_shapes):
        return [()]

    def forward(self, loc, conf, priors, gt):
        n, p = loc.shape[0], self.priors
        t = self.targets(loc.detach().cpu().numpy(), conf.detach().cpu().numpy(),
                         priors.detach().cpu().numpy(), gt.detach().cpu().numpy())
        norm = normalizer(self.mode, n, p, torch.tensor(t.num_matches))
        total = torch.zeros((), dtype=loc.dtype, device=loc.device)
        if self.loc_term and len(t.loc):
            total = total + self.p.loc_weight * self._loc_loss(loc, t) / norm
        if self.conf_term and (t.conf is None or len(t.conf)):
            total = total + self._conf_loss(conf, t) / norm
        return total

    def _loc_loss(self, loc, t):
        img, prior, cls = _on(t.loc, loc).unbind(1)
        pred = loc.reshape(loc.shape[0], self.priors, self.loc_classes, 4)[img, prior, cls]
        target = _on(t.loc_target, loc, loc.dtype)
        # with encode_variance_in_target the fork divides the prediction by the variance but
        # copies the gradient of the quotient back unchanged: value pred / var, gradient as pred's
        pred = pred + (pred / _on(t.loc_scale, loc, loc.dtype) - pred).detach()
        pred = torch.where(_on(t.loc_free, loc), pred, target)
        d = pred - target
        return smooth_l1(d).sum() if self.p.loc_loss_type == MultiBox.SMOOTH_L1 else (0.5 * d * d).sum()

    def _conf_loss(self, conf, t):
        rows = conf.reshape(-1, self.classes)
        if t.conf is not None:
            img, prior = _on(t.conf, conf).unbind(1)
            rows = conf.reshape(conf.shape[0], self.priors, self.classes)[img, prior]
        target = _on(t.conf_target, conf)
        if self.p.conf_loss_type == MultiBox.SOFTMAX:
            picked = F.log_softmax(rows, dim=1).gather(1, target[:, None])[:, 0]
            return -_floored_log(picked, FLT_MIN).sum()
        return F.binary_cross_entropy_with_logits(rows, target.to(rows.dtype).reshape(rows.shape),
                                                  reduction="sum")

    # ---- the host's decisions ------------------------------------------------------------

    def targets(self, loc, conf, priors, gt):
        """Match, mine and encode one batch (NumPy arrays) -> Targets."""
        n, p = loc.shape[0], self.priors
        prior_boxes, variances = priors.reshape(2, p, 4)[0].astype(F32), priors.reshape(2, p, 4)[1].astype(F32)
        loc = loc.reshape(n, p, self.loc_classes, 4).astype(F32)
        conf = conf.reshape(n, p, self.classes).astype(F32)
        truth = self._ground_truth(gt.reshape(-1, 8))
        matches = [self._match(loc[i], prior_boxes, variances, truth.get(i)) for i in range(n)]
        records = self._encode_loc(loc, prior_boxes, variances, truth, matches)
        negatives = [[] for _ in range(n)]
        if self.mining:
            negatives = self._mine(loc, conf, prior_boxes, variances, truth, matches, records)
        if self.p.mining_type == MultiBox.HARD_EXAMPLE:  # positives not picked were unmatched
            records = self._encode_loc(loc, prior_boxes, variances, truth, matches)
        conf_rows, conf_target = self._encode_conf(n, truth, matches, negatives)
        return Targets(*records[:4], conf_rows, conf_target, len(records[0]))

    def _ground_truth(self, rows):
        """GetGroundTruth: {image: (boxes (G, 4), labels (G,))}, skipping rows of image -1 and,
        without use_difficult_gt, difficult boxes."""
        p, found = self.p, {}
        for row in rows:
            item, label = int(row[0]), int(row[1])
            if item == -1 or (not p.use_difficult_gt and row[7]):
                continue
            if label == p.background_label_id:
                raise self.error(f"ground truth of image {item} has the background label {label}")
            if not p.map_object_to_agnostic and not 0 <= label < self.classes:
                raise self.error(f"ground truth of image {item} has label {label}, outside [0, {self.classes})")
            boxes, labels = found.setdefault(item, ([], []))
            boxes.append(row[3:7])
            labels.append(label)
        return {i: (np.array(b, F32), np.array(lab)) for i, (b, lab) in found.items()}

    def _match(self, loc, priors, variances, truth):
        """FindMatches for one image -> {location label: (indices (P,), overlaps (P,))}, sorted
        by label (-1 for shared locations), indices into the image's gt boxes."""
        p = self.p
        if truth is None:
            return {}
        boxes, labels = truth
        if p.use_prior_for_matching:
            idx, ov = bbox.match(boxes, priors, p.match_type, p.overlap_threshold, p.ignore_cross_boundary_bbox)
            if p.share_location:
                return {-1: (idx, ov)}
            return {c: (np.where((idx > -1) & (labels[np.maximum(idx, 0)] == c), idx, -1), ov)
                    for c in range(self.loc_classes) if c != p.background_label_id}
        found = {}
        for c in range(self.loc_classes):
            label = -1 if p.share_location else c
            if not p.share_location and label == p.background_label_id:
                continue
            decoded = bbox.decode(priors, variances, loc[:, c], p.code_type, p.encode_variance_in_target)
            pick = np.arange(len(labels)) if label == -1 else np.nonzero(labels == label)[0]
            idx, ov = bbox.match(boxes[pick], decoded, p.match_type, p.overlap_threshold,
                                 p.ignore_cross_boundary_bbox)
            found[label] = (np.where(idx >= 0, pick[np.maximum(idx, 0)], idx) if len(pick) else idx, ov)
        return found

    def _encode_loc(self, loc, priors, variances, truth, matches):
        """EncodeLocPrediction: for every positive (image, then label, then prior) its index,
        encoded target, divisor and bp_inside mask, and the prediction as the fork's
        loss sees it."""
        p = self.p
        keys, targets, scales, free, preds = [], [], [], [], []
        for i, found in enumerate(matches):
            for label, (idx, _) in found.items():
                pos = np.nonzero(idx > -1)[0]
                if not len(pos):
                    continue
                cls = 0 if p.share_location else label
                target = bbox.encode(priors[pos], variances[pos], truth[i][0][idx[pos]], p.code_type,
                                     p.encode_variance_in_target)
                pred = loc[i, pos, cls]
                keep = np.ones_like(pred, bool)
                if p.bp_inside:
                    where = priors[pos] if p.use_prior_for_matching else bbox.decode(
                        priors[pos], variances[pos], pred, p.code_type, p.encode_variance_in_target)
                    keep = (where >= 0) & (where <= 1)
                scale = variances[pos] if p.encode_variance_in_target else np.ones_like(pred)
                keys.append(np.stack([np.full(len(pos), i), pos, np.full(len(pos), cls)], 1))
                targets.append(target / scale)
                scales.append(scale)
                free.append(keep)
                preds.append(np.where(keep, pred, target) / scale)
        if not keys:
            empty = np.zeros((0, 4), F32)
            return np.zeros((0, 3), np.int64), empty, empty, np.zeros((0, 4), bool), empty
        return (np.concatenate(keys), np.concatenate(targets).astype(F32), np.concatenate(scales).astype(F32),
                np.concatenate(free), np.concatenate(preds).astype(F32))

    def _conf_losses(self, conf, truth, matches):
        """ComputeConfLoss: per image and prior, the confidence loss against the prior's label
        (its gt's label if matched, else the background)."""
        p, losses = self.p, []
        for i, found in enumerate(matches):
            label = np.full(self.priors, p.background_label_id)
            for idx, _ in reversed(list(found.values())):  # the first label with a match wins
                label = np.where(idx > -1, truth[i][1][np.maximum(idx, 0)], label)
            x = conf[i]
            if p.conf_loss_type == MultiBox.SOFTMAX:
                e = np.exp(x - x.max(axis=1, keepdims=True)).astype(F32)
                prob = (np.take_along_axis(e, label[:, None], 1)[:, 0] / e.sum(axis=1)).astype(F32)
                losses.append(-np.log(np.maximum(prob, F32(FLT_MIN))).astype(F32))
            else:
                target = (np.arange(self.classes)[None, :] == label[:, None]).astype(F32)
                per = x * (target - (x >= 0)) - np.log(F32(1) + np.exp(x - 2 * x * (x >= 0)))
                losses.append(-per.sum(axis=1).astype(F32))
        return losses

    def _mine(self, loc, conf, priors, variances, truth, matches, records):
        """MineHardExamples: the negatives of each image (prior indices, in the fork's order);
        with HARD_EXAMPLE, positives not picked are unmatched in ``matches``."""
        p = self.p
        conf_loss = self._conf_losses(conf, truth, matches)
        loc_loss = [np.zeros(self.priors, F32) for _ in matches]
        if p.mining_type == MultiBox.HARD_EXAMPLE and len(records[0]):
            keys, target, pred = records[0], records[1], records[4]
            per = _smooth_l1_np(pred - target) if p.loc_loss_type == MultiBox.SMOOTH_L1 \
                else F32(0.5) * (pred - target) ** 2
            for (i, j, _), value in zip(keys, per.sum(axis=1).astype(F32)):
                loc_loss[i][j] = value
        negatives = []
        for i, found in enumerate(matches):
            loss = (conf_loss[i] + loc_loss[i]).astype(F32)
            neg = []
            for label, (idx, overlaps) in found.items():
                if p.mining_type == MultiBox.MAX_NEGATIVE:
                    eligible = np.nonzero((idx == -1) & (overlaps < F32(p.neg_overlap)))[0]
                    wanted = int(F32(np.count_nonzero(idx > -1)) * F32(p.neg_pos_ratio))
                else:
                    eligible, wanted = np.arange(len(idx)), p.sample_size
                chosen = self._select(eligible, loss, min(wanted, len(eligible)), priors, variances, loc[i], label)
                picked = np.zeros(len(idx), bool)
                picked[chosen] = True
                if p.mining_type == MultiBox.HARD_EXAMPLE:
                    idx[(idx > -1) & ~picked] = -1
                neg.extend(np.nonzero((idx == -1) & picked)[0].tolist())
            negatives.append(neg)
        return negatives

    def _select(self, eligible, loss, wanted, priors, variances, loc, label):
        """The ``wanted`` eligible priors of highest loss, or the first ``wanted`` kept by NMS."""
        p = self.p
        nms = p.nms_param
        if p.HasField("nms_param") and nms.nms_threshold > 0:
            boxes = priors if p.use_prior_for_nms else bbox.decode(
                priors, variances, loc[:, 0 if p.share_location else label], p.code_type,
                p.encode_variance_in_target)
            kept = bbox.nms(boxes[eligible], loss[eligible], nms.nms_threshold, nms.top_k)
            if len(kept) < wanted:
                log.info("not enough sample after nms: %d", len(kept))
            return eligible[kept[:wanted]]
        order = np.argsort(-loss[eligible], kind="stable")
        return eligible[order[:wanted]]

    def _encode_conf(self, n, truth, matches, negatives):
        """EncodeConfPrediction -> (rows (K, 2) or None, targets), as the fork fills them:
        targets start as background_label_id everywhere, then positives (and, for LOGISTIC,
        negatives when the background is a class) get theirs."""
        p, c, bg = self.p, self.classes, self.p.background_label_id
        logistic = p.conf_loss_type == MultiBox.LOGISTIC
        positives = [(i, j, bg + 1 if p.map_object_to_agnostic else int(truth[i][1][idx[j]]))
                     for i, found in enumerate(matches) for idx, _ in found.values()
                     for j in np.nonzero(idx > -1)[0]]
        if not self.mining:
            target = np.full(n * self.priors * (c if logistic else 1), bg, F32 if logistic else np.int64)
            for i, j, label in positives:
                # the fork steps its target pointer by P per image, also over LOGISTIC's P * C values
                target[i * self.priors + (j * c + label if logistic else j)] = 1 if logistic else label
            return None, target
        rows, labels = [], []
        for i in range(n):
            mine = [(j, label) for k, j, label in positives if k == i] + [(j, bg) for j in negatives[i]]
            rows += [(i, j) for j, _ in mine]
            labels += [label for _, label in mine]
        rows = np.array(rows, np.int64).reshape(-1, 2)
        if not logistic:
            return rows, np.array(labels, np.int64)
        target = np.full((len(rows), c), bg, F32)
        for k, label in enumerate(labels):
            if 0 <= label < c:  # a negative's background outside the classes sets nothing
                target[k, label] = 1
        return rows, target
