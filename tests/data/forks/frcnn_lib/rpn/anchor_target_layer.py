"""AnchorTargetLayer: one square anchor per feature cell, labelled 1 where its centre lies in a
ground-truth box and 0 elsewhere (py-faster-rcnn samples and weighs them; this does not)."""
import caffe
import numpy as np
import yaml


class AnchorTargetLayer(caffe.Layer):

    def setup(self, bottom, top):
        layer_params = yaml.safe_load(self.param_str_)
        self._feat_stride = layer_params['feat_stride']
        height, width = bottom[0].data.shape[-2:]
        top[0].reshape(1, 1, height, width)

    def forward(self, bottom, top):
        height, width = bottom[0].data.shape[-2:]
        gt_boxes = bottom[1].data
        cx = (np.arange(width) + 0.5) * self._feat_stride
        cy = (np.arange(height) + 0.5) * self._feat_stride
        labels = np.zeros((height, width), dtype=np.float32)
        for x1, y1, x2, y2, _ in gt_boxes:
            inside = ((cy[:, None] >= y1) & (cy[:, None] <= y2)) & ((cx[None, :] >= x1) & (cx[None, :] <= x2))
            labels[inside] = 1
        top[0].reshape(1, 1, height, width)
        top[0].data[...] = labels

    def backward(self, top, propagate_down, bottom):
        pass

    def reshape(self, bottom, top):
        pass
