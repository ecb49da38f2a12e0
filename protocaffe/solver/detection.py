"""How a test round scores its net's outputs: averaged (eval_type "classification", Caffe's)
or as mean average precision (eval_type "detection", the SSD fork's TestDetection).

A score takes each test batch's outputs with ``add`` and gives {output name: value} with
``result``. For detection every output is a DetectionEvaluate top, rows [image, label,
score, tp, fp] with [-1, label, number of gt boxes, -1, -1] rows counting the ground truth;
the rows of all batches are pooled, AP is computed per label (protocaffe.bbox,
``ap_version`` "11point", "MaxIntegral" or "Integral") and averaged over the labels that
have ground-truth rows. Rows with tp = fp = 0 (detections of difficult boxes) are left out.
"""
import numpy as np

from protocaffe import bbox, schema
from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log, g


class MeanOutputs:
    """Each output averaged over the test batches (values summed in double)."""

    def __init__(self, param, iters):
        self.iters, self.sums = iters, None

    def add(self, outputs):
        self.sums = outputs if self.sums is None else {n: self.sums[n] + outputs[n] for n in outputs}

    def result(self):
        return {n: v / self.iters for n, v in (self.sums or {}).items()}


class MeanAP:
    """Mean average precision of each DetectionEvaluate output over the test batches."""

    def __init__(self, param, iters):
        self.version = schema.get(param, "ap_version")
        if self.version not in bbox.AP_VERSIONS:
            raise CaffeError(f"unknown ap_version '{self.version}'; known: {', '.join(bbox.AP_VERSIONS)}")
        self.per_class = schema.get(param, "show_per_class_result")
        self.num_pos, self.pairs = {}, {}  # output name -> label -> count / [(score, tp)]

    def add(self, outputs):
        for name, rows in outputs.items():
            rows = np.asarray(rows)
            if rows.ndim != 4 or rows.shape[3] != 5:
                raise CaffeError(f"detection evaluation needs test outputs of rows [image, label, score, tp, fp] "
                                 f"(DetectionEvaluate); output '{name}' has shape {rows.shape}")
            num_pos, pairs = self.num_pos.setdefault(name, {}), self.pairs.setdefault(name, {})
            for item, label, score, tp, fp in rows.reshape(-1, 5):
                if int(item) == -1:
                    num_pos[int(label)] = num_pos.get(int(label), 0) + int(score)
                elif int(tp) or int(fp):
                    pairs.setdefault(int(label), []).append((np.float32(score), int(tp)))

    def result(self):
        """{output: mAP} for each output with detections (the fork reports nothing for one without)."""
        found = {}
        for name, pairs in self.pairs.items():
            if not pairs:
                continue
            total = np.float32(0)
            for label, count in sorted(self.num_pos[name].items()):
                if label not in pairs:
                    log.warning("Missing true_pos for label: %d", label)
                    continue
                ap = bbox.average_precision(pairs[label], count, self.version)
                total = np.float32(total + ap)
                if self.per_class:
                    log.info("class%d: %s", label, g(float(ap)))
            found[name] = float(np.float32(total / np.float32(len(self.num_pos[name]))))
        return found


SCORES = {"classification": MeanOutputs, "detection": MeanAP}
"""eval_type -> the score of a test round."""
