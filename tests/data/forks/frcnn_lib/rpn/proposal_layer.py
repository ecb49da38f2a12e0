"""ProposalLayer: the best-scoring anchors moved by their predicted deltas, as py-faster-rcnn's
rpn.proposal_layer (without NMS); how many depends on the phase, read as str(self.phase)."""
import caffe
import numpy as np
import yaml

CFG = {'TRAIN': {'RPN_POST_NMS_TOP_N': 6}, 'TEST': {'RPN_POST_NMS_TOP_N': 4}}


class ProposalLayer(caffe.Layer):

    def setup(self, bottom, top):
        layer_params = yaml.safe_load(self.param_str_)
        self._feat_stride = layer_params['feat_stride']
        top[0].reshape(1, 5)

    def forward(self, bottom, top):
        cfg_key = str(self.phase)  # either 'TRAIN' or 'TEST'
        post_nms_topN = CFG[cfg_key]['RPN_POST_NMS_TOP_N']
        scores = bottom[0].data[0, 1]
        bbox_deltas = bottom[1].data[0]
        im_info = bottom[2].data[0, :]
        height, width = scores.shape
        ys, xs = np.mgrid[0:height, 0:width]
        size = 2.0 * self._feat_stride
        ctr_x = (xs + 0.5) * self._feat_stride + bbox_deltas[0] * size
        ctr_y = (ys + 0.5) * self._feat_stride + bbox_deltas[1] * size
        w = size * np.exp(np.clip(bbox_deltas[2], -2, 2))
        h = size * np.exp(np.clip(bbox_deltas[3], -2, 2))
        proposals = np.stack([ctr_x - w / 2, ctr_y - h / 2, ctr_x + w / 2, ctr_y + h / 2], -1).reshape(-1, 4)
        proposals[:, 0::2] = np.clip(proposals[:, 0::2], 0, im_info[1] - 1)
        proposals[:, 1::2] = np.clip(proposals[:, 1::2], 0, im_info[0] - 1)
        order = scores.ravel().argsort(kind='stable')[::-1][:post_nms_topN]
        proposals = proposals[order]
        batch_inds = np.zeros((proposals.shape[0], 1), dtype=np.float32)
        blob = np.hstack((batch_inds, proposals.astype(np.float32, copy=False)))
        top[0].reshape(*(blob.shape))
        top[0].data[...] = blob

    def backward(self, top, propagate_down, bottom):
        """This layer does not propagate gradients."""
        pass

    def reshape(self, bottom, top):
        """Reshaping happens during the call to forward."""
        pass
