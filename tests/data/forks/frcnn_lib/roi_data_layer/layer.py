"""RoIDataLayer: one image of the roidb per forward, as py-faster-rcnn's roi_data_layer.layer."""
import caffe
import numpy as np
import yaml


class RoIDataLayer(caffe.Layer):
    """Tops data (1, 3, H, W), im_info (1, 3) and gt_boxes (G, 5): x1, y1, x2, y2, class."""

    def set_roidb(self, roidb):
        """Called by the training script through solver.net.layers[0]."""
        self._roidb = roidb
        self._cur = 0

    def setup(self, bottom, top):
        layer_params = yaml.safe_load(self.param_str_)
        self._num_classes = layer_params['num_classes']
        self._name_to_top_map = {'data': 0, 'im_info': 1, 'gt_boxes': 2}
        top[0].reshape(1, 3, 32, 32)
        top[1].reshape(1, 3)
        top[2].reshape(1, 5)

    def forward(self, bottom, top):
        entry = self._roidb[self._cur % len(self._roidb)]
        self._cur += 1
        image = entry['image']
        blobs = {'data': image[np.newaxis],
                 'im_info': np.array([[image.shape[1], image.shape[2], 1.0]]),
                 'gt_boxes': np.hstack((entry['boxes'], entry['gt_classes'][:, np.newaxis]))}
        for blob_name, blob in blobs.items():
            top_ind = self._name_to_top_map[blob_name]
            top[top_ind].reshape(*(blob.shape))
            top[top_ind].data[...] = blob.astype(np.float32, copy=False)

    def backward(self, top, propagate_down, bottom):
        """This layer does not propagate gradients."""
        pass

    def reshape(self, bottom, top):
        """Reshaping happens during the call to forward."""
        pass
