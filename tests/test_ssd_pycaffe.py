"""pycaffe on SSD nets: `caffe.io` prepares images and `caffe.Net` runs the fork's tiny SSD deploy
net to the fork's detections (tests/data/golden/ssd/runs/ssd_train); `net_spec` writes the fork's
layers as the fork's own pycaffe does (its fields by bare name), text that OpenCV 4's Caffe
importer, which knows the fork's schema, reads."""
import cv2
import numpy as np

import protocaffe as caffe
from conftest import GOLDEN, assert_close
from protocaffe import layers as L, NetSpec, params as P
from protocaffe.fileio import parse_text
from protocaffe.proto import caffe_pb2

RUN = GOLDEN / "ssd" / "runs" / "ssd_train"


def test_pycaffe_io_and_net_reproduce_the_forks_detections(tmp_path):
    io_ = np.load(RUN / "deploy_io.npz")
    paths = []
    for i, item in enumerate(io_["in_data"]):  # the images: BGR pixels p stored as (p - 128) / 64
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], np.round(item * 64 + 128).astype(np.uint8).transpose(1, 2, 0))
    net = caffe.Net(str(RUN / "deploy.prototxt"), str(RUN / "caffe_snapshots" / "ssd_iter_20.caffemodel"), caffe.TEST)
    assert net.blobs["detection_out"].data.shape == (1, 1, 1, 7)  # Caffe's shape before data
    t = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))  # load_image gives RGB, the net was trained on BGR
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([128.0, 128.0, 128.0]))
    t.set_input_scale("data", 1 / 64)
    for i, path in enumerate(paths):
        net.blobs["data"].data[i] = t.preprocess("data", caffe.io.load_image(path))
    assert_close(net.blobs["data"].data, io_["in_data"], what="preprocessed images")
    out = net.forward()
    assert_close(out["detection_out"], io_["out_detection_out"], what="detection_out")
    assert net.blobs["detection_out"].data.shape == (1, 1, 200, 7)
    assert_close(net.blobs["mbox_priorbox"].data, io_["out_mbox_priorbox"], what="mbox_priorbox")


HEAD = """layer {
  name: "conv4_3_norm"
  type: "Normalize"
  bottom: "conv4_3"
  top: "conv4_3_norm"
  norm_param {
    across_spatial: false
    scale_filler {
      type: "constant"
      value: 20
    }
    channel_shared: false
  }
}
layer {
  name: "conv4_3_norm_mbox_priorbox"
  type: "PriorBox"
  bottom: "conv4_3_norm"
  bottom: "data"
  top: "conv4_3_norm_mbox_priorbox"
  prior_box_param {
    min_size: 30
    max_size: 60
    aspect_ratio: 2
    flip: true
    clip: false
    variance: 0.1
    variance: 0.1
    variance: 0.2
    variance: 0.2
    step: 8
    offset: 0.5
  }
}
"""


def ssd_head():
    """A one-source SSD head as the fork's model_libs.CreateMultiBoxHead writes it."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 64, 64]))
    n.conv4_3 = L.Convolution(n.data, num_output=8, kernel_size=3, pad=1, stride=8,
                              weight_filler=dict(type="xavier"))
    n.conv4_3_norm = L.Normalize(n.conv4_3, norm_param=dict(
        across_spatial=False, scale_filler=dict(type="constant", value=20), channel_shared=False))
    n.conv4_3_norm_mbox_priorbox = L.PriorBox(n.conv4_3_norm, n.data, prior_box_param=dict(
        min_size=[30.0], max_size=[60.0], aspect_ratio=[2], flip=True, clip=False,
        variance=[0.1, 0.1, 0.2, 0.2], step=8, offset=0.5))
    for kind, num in (("loc", 16), ("conf", 12)):
        n[f"{kind}"] = L.Convolution(n.conv4_3_norm, num_output=num, kernel_size=3, pad=1,
                                     weight_filler=dict(type="xavier"))
        n[f"{kind}_perm"] = L.Permute(n[kind], order=[0, 2, 3, 1])  # keyword routed to permute_param
        n[f"{kind}_flat"] = L.Flatten(n[f"{kind}_perm"], axis=1)
    n.conf_softmax = L.Softmax(L.Reshape(n.conf_flat, shape=dict(dim=[0, -1, 3])), axis=2)
    n.conf_prob = L.Flatten(n.conf_softmax, axis=1)
    n.detection_out = L.DetectionOutput(n.loc_flat, n.conf_prob, n.conv4_3_norm_mbox_priorbox, detection_output_param=dict(
        num_classes=3, share_location=True, background_label_id=0, code_type=P.PriorBox.CENTER_SIZE,
        nms_param=dict(nms_threshold=0.45, top_k=100), keep_top_k=50, confidence_threshold=0.01))
    return n.to_proto()


def test_net_spec_writes_the_forks_layers_by_bare_name(tmp_path):
    text = str(ssd_head())
    assert HEAD in text and "[caffe." not in text
    assert 'permute_param {\n    order: 0\n    order: 2\n    order: 3\n    order: 1\n  }' in text
    assert "detection_output_param {\n    num_classes: 3\n" in text
    # keywords go to the type's own message as in the fork: min_size= lands in prior_box_param
    kw = NetSpec()
    kw.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    kw.pb = L.PriorBox(kw.data, kw.data, min_size=4.0, aspect_ratio=2)
    kw.norm = L.Normalize(kw.data, across_spatial=False)
    kw_text = str(kw.to_proto())
    assert "prior_box_param {\n    min_size: 4\n    aspect_ratio: 2\n  }" in kw_text
    assert "norm_param {\n    across_spatial: false\n  }" in kw_text
    (tmp_path / "head.prototxt").write_text(text)
    assert parse_text(text, caffe_pb2.NetParameter) == ssd_head()
    rows = caffe.Net(str(tmp_path / "head.prototxt"), caffe.TEST).forward()["detection_out"]
    assert rows.shape[-1] == 7
    opencv = cv2.dnn.readNetFromCaffe(str(tmp_path / "head.prototxt"))  # OpenCV reads the fork's text
    assert {"conv4_3_norm", "conv4_3_norm_mbox_priorbox", "loc_perm", "detection_out"} <= set(opencv.getLayerNames())
