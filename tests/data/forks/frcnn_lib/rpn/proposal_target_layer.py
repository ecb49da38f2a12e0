"""ProposalTargetLayer in py-R-FCN's style (self.param_str, self.phase == 0): the proposals
and the ground-truth boxes, each labelled with the class of the box it overlaps most (IoU
>= 0.5, else background), with per-class box targets and weights; 4-d tops as py-R-FCN's."""
import caffe
import numpy as np
import yaml


def overlaps(boxes, gt):
    x1 = np.maximum(boxes[:, None, 0], gt[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], gt[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], gt[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], gt[None, :, 3])
    inter = np.maximum(x2 - x1 + 1, 0) * np.maximum(y2 - y1 + 1, 0)
    area = lambda b: (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # noqa: E731
    return inter / (area(boxes)[:, None] + area(gt)[None, :] - inter)


class ProposalTargetLayer(caffe.Layer):

    def setup(self, bottom, top):
        layer_params = yaml.safe_load(self.param_str)
        self._num_classes = layer_params['num_classes']
        self._training = self.phase == 0
        top[0].reshape(1, 5, 1, 1)
        top[1].reshape(1, 1, 1, 1)
        for i in (2, 3, 4):
            top[i].reshape(1, self._num_classes * 4, 1, 1)

    def forward(self, bottom, top):
        assert self._training, 'only the training net samples regions'
        gt_boxes = bottom[1].data
        rois = np.vstack((bottom[0].data, np.hstack((np.zeros((len(gt_boxes), 1)), gt_boxes[:, :4]))))
        iou = overlaps(rois[:, 1:], gt_boxes[:, :4])
        best = iou.argmax(1)
        labels = np.where(iou.max(1) >= 0.5, gt_boxes[best, 4], 0)
        gt = gt_boxes[best, :4]
        widths, heights = rois[:, 3] - rois[:, 1] + 1, rois[:, 4] - rois[:, 2] + 1
        targets = np.stack([((gt[:, 0] + gt[:, 2]) - (rois[:, 1] + rois[:, 3])) / 2 / widths,
                            ((gt[:, 1] + gt[:, 3]) - (rois[:, 2] + rois[:, 4])) / 2 / heights,
                            np.log((gt[:, 2] - gt[:, 0] + 1) / widths),
                            np.log((gt[:, 3] - gt[:, 1] + 1) / heights)], 1)
        bbox_targets = np.zeros((len(rois), 4 * self._num_classes), dtype=np.float32)
        bbox_inside_weights = np.zeros_like(bbox_targets)
        for i in np.where(labels > 0)[0]:
            start = int(4 * labels[i])
            bbox_targets[i, start:start + 4] = targets[i]
            bbox_inside_weights[i, start:start + 4] = 1
        blobs = [rois, labels, bbox_targets, bbox_inside_weights, (bbox_inside_weights > 0).astype(np.float32)]
        for i, blob in enumerate(blobs):
            blob = blob.reshape((blob.shape[0], -1, 1, 1))
            top[i].reshape(*blob.shape)
            top[i].data[...] = blob

    def backward(self, top, propagate_down, bottom):
        """This layer does not propagate gradients."""
        pass

    def reshape(self, bottom, top):
        """Reshaping happens during the call to forward."""
        pass
