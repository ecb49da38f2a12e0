"""pycaffe's classification script runs unchanged; Classifier, Detector and `protocaffe classify`
give the same probabilities as the plain module (golden-checked in test_nets) on the same crops."""
import sys
import textwrap

import numpy as np
import torch

import protocaffe
from conftest import GOLDEN, assert_close
from protocaffe import io as caffe_io
from protocaffe.cli import main
from protocaffe.net import build_net

NETS = GOLDEN / "nets"
MODEL, WEIGHTS = str(NETS / "slim_caffenet_deploy.prototxt"), str(NETS / "slim_caffenet.caffemodel")
IMAGE = str(GOLDEN / "pycaffe" / "io" / "colour.jpg")
MEAN = np.array([104.0, 117.0, 123.0])

SCRIPT = textwrap.dedent("""
    import numpy as np
    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net(MODEL, WEIGHTS, caffe.TEST)
    transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
    transformer.set_transpose('data', (2, 0, 1))
    transformer.set_mean('data', np.array([104, 117, 123]))
    transformer.set_raw_scale('data', 255)
    transformer.set_channel_swap('data', (2, 1, 0))
    image = caffe.io.load_image(IMAGE)
    crops = caffe.io.oversample([caffe.io.resize_image(image, (256, 256))], (227, 227))
    net.blobs['data'].reshape(10, 3, 227, 227)
    net.blobs['data'].data[...] = np.array([transformer.preprocess('data', c) for c in crops])
    output = net.forward()
    output_prob = output['prob'].mean(0)
    top_inds = output_prob.argsort()[::-1][:5]
    """)


def reference_probs(crops):
    """The ten crops through the plain CaffeNet, preprocessed by hand (BGR, 0-255, less the mean)."""
    module = build_net(MODEL, protocaffe.TEST, weights=WEIGHTS)
    x = (crops[:, :, :, ::-1] * 255 - MEAN).transpose(0, 3, 1, 2).astype(np.float32)
    with torch.no_grad():
        return module(data=torch.from_numpy(np.ascontiguousarray(x)))["prob"].numpy()


def test_classification_script_runs_unchanged(monkeypatch):
    monkeypatch.setitem(sys.modules, "caffe", protocaffe)
    scope = {"MODEL": MODEL, "WEIGHTS": WEIGHTS, "IMAGE": IMAGE}
    exec(compile(SCRIPT, "classify_example.py", "exec"), scope)
    crops = caffe_io.oversample([caffe_io.resize_image(caffe_io.load_image(IMAGE), (256, 256))], (227, 227))
    expected = reference_probs(crops).mean(0)
    assert_close(scope["output_prob"], expected, what="mean of ten crops")
    assert list(scope["top_inds"]) == list(np.argsort(-expected)[:5])


def test_classifier_predict_and_the_classify_command(tmp_path):
    clf = protocaffe.Classifier(MODEL, WEIGHTS, image_dims=(256, 256), mean=MEAN, raw_scale=255,
                                channel_swap=(2, 1, 0))
    image = caffe_io.load_image(IMAGE)
    resized = caffe_io.resize_image(image, (256, 256))
    ten = reference_probs(caffe_io.oversample([resized], (227, 227)))
    assert_close(clf.predict([image, image]), np.stack([ten.mean(0)] * 2), what="oversampled")
    centre = reference_probs(resized[None, 14:241, 14:241])
    assert_close(clf.predict([image], oversample=False), centre, what="centre crop")
    np.save(tmp_path / "mean.npy", np.broadcast_to(MEAN[:, None, None], (3, 256, 256)))
    out = tmp_path / "out.npy"
    assert main(["classify", IMAGE, str(out), "--model_def", MODEL, "--pretrained_model", WEIGHTS,
                 "--mean_file", str(tmp_path / "mean.npy"), "--center_only"]) == 0
    assert_close(np.load(out), centre, what="protocaffe classify")
    assert main(["classify", IMAGE, str(out), "--model_def", MODEL, "--pretrained_model", WEIGHTS,
                 "--mean_file", str(tmp_path / "missing.npy")]) == 1


def test_detector_windows_and_context_padding():
    det = protocaffe.Detector(MODEL, WEIGHTS, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    image = caffe_io.load_image(IMAGE)
    window = np.array([10, 20, 110, 140])
    found = det.detect_windows([(IMAGE, [window])])
    assert found[0]["filename"] == IMAGE and found[0]["window"] is window
    crop = caffe_io.resize_image(image[10:110, 20:140], (227, 227))
    assert_close(found[0]["prediction"], reference_probs(crop[None])[0], what="window")
    padded = protocaffe.Detector(MODEL, WEIGHTS, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0),
                                 context_pad=16)
    corner = padded.crop(image, np.array([0, 0, 60, 60]))
    assert corner.shape == (227, 227, 3)
    # the context above and left of the image is the mean in image space (RGB, 0-1)
    np.testing.assert_allclose(corner[0, 0], MEAN[::-1] / 255, rtol=1e-6)
