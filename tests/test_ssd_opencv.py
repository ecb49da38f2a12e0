"""OpenCV 4's Caffe importer as a second oracle for SSD: models/ssd300 (VGG-16 body, conv4_3_norm,
dilated fc6, six PriorBox sources) and models/mobilenet_ssd (depthwise convolutions, BatchNorm +
Scale, six heads), both with narrowed channels, get random weights saved by protocaffe; OpenCV's
`cv2.dnn.readNetFromCaffe` runs them on the same image, and its detection_out, mbox_loc,
mbox_conf_flatten and mbox_priorbox equal protocaffe's within 1e-4."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protocaffe import net as netlib

MODELS = Path(__file__).resolve().parents[1] / "models"


def random_weights(net, conf_scale, background_bias, generator):
    """Convolutions He-normal with N(0, 0.1) biases; BatchNorm statistics and Scale factors near
    those of a trained net. The heads are set so that the kept detections are well apart:
    loc heads x 0.3 (boxes stay near their priors), conf heads x ``conf_scale`` and every
    prior's background logit + ``background_bias``. Random features give most priors nearly
    the same scores; these settings spread the scores that survive NMS, so that their order
    does not rest on the last bits in which two float32 implementations differ."""
    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=generator) * std)
    with torch.no_grad():
        for name, layer in net.layer_by_name().items():
            if layer.type == "Convolution":
                weight = layer.blobs[0]
                normal(weight, (2.0 / weight[0].numel()) ** 0.5)
                if len(layer.blobs) > 1:
                    normal(layer.blobs[1], 0.1)
                if name.endswith("_mbox_loc"):
                    weight.mul_(0.3)
                if name.endswith("_mbox_conf"):
                    weight.mul_(conf_scale)
                    layer.blobs[1].view(-1, 21)[:, 0] += background_bias
            elif layer.type == "BatchNorm":
                mean, variance, factor = layer.blobs
                normal(mean, 0.1)
                variance.copy_(torch.rand(variance.shape, generator=generator) + 0.5)
                factor.fill_(1)
            elif layer.type == "Scale":
                layer.blobs[0].copy_(torch.rand(layer.blobs[0].shape, generator=generator) + 0.5)
                normal(layer.blobs[1], 0.1)


def caffe_order(rows):
    """Rows sorted as Caffe-SSD writes them: by image, then label, then descending score."""
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


@pytest.mark.parametrize("model, conf_scale, background_bias, rows", [
    ("ssd300", 1.0, 8.0, 200),        # keep_top_k 200 of 8732 priors x 20 classes
    ("mobilenet_ssd", 2.0, 0.0, 100),  # keep_top_k 100 of 1917 priors x 20 classes
])
def test_detections_equal_opencvs(model, conf_scale, background_bias, rows, tmp_path):
    prototxt = str(MODELS / model / "deploy.prototxt")
    generator = torch.Generator().manual_seed(0)
    net = netlib.build_net(prototxt)
    random_weights(net, conf_scale, background_bias, generator)
    net.save(tmp_path / "random.caffemodel")
    # a smooth random image: features then differ from place to place, as on a photograph
    image = F.interpolate(torch.randn((1, 3, 6, 6), generator=generator), size=(300, 300), mode="bilinear") * 2
    with torch.no_grad():
        ours = net(data=image)
    cv = cv2.dnn.readNetFromCaffe(prototxt, str(tmp_path / "random.caffemodel"))
    cv.setInput(image.numpy())
    names = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox", "detection_out"]
    theirs = dict(zip(names, cv.forward(names)))
    for name in names[:3]:
        np.testing.assert_allclose(ours[name].numpy(), theirs[name], rtol=1e-4, atol=1e-4, err_msg=name)

    mine = ours["detection_out"].numpy()[0, 0]
    assert len(mine) == rows and len(np.unique(mine[:, 1])) > 3
    np.testing.assert_array_equal(mine, caffe_order(mine))  # Caffe-SSD's order
    # OpenCV writes the rows by descending score over all labels and pads its fixed
    # keep_top_k rows with zeros; put its rows in Caffe's order to compare
    opencv = theirs["detection_out"][0, 0]
    opencv = caffe_order(opencv[opencv[:, 2] > 0])
    np.testing.assert_allclose(mine, opencv, rtol=0, atol=1e-4)
    for label in np.unique(mine[:, 1]):
        scores = np.sort(mine[mine[:, 1] == label, 2])
        assert np.diff(scores).min(initial=1) > 2e-5, "scores of one label too close to compare the order"
