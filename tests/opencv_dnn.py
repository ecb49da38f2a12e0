"""OpenCV 4's Caffe importer as a reference: a prototxt and random weights, run by both.

``run_both(tmp_path, text, inputs)`` builds protocaffe's net from the prototxt text (its
fillers seeded), writes its weights as a .caffemodel, reads prototxt and weights with
``cv2.dnn.readNetFromCaffe`` and returns ({top: protocaffe's array}, {top: OpenCV's}).
``opencv_text`` may give OpenCV a prototxt of its own (its parameter names differ for some
types); it must name the same layers, which take their blobs from the same caffemodel.
``opencv_blobs`` ({layer name: [array]}) adds blobs OpenCV's layer wants and protocaffe's
has not (OpenCV's Region takes its anchors as a blob).
"""
import cv2
import numpy as np
import torch

from protocaffe import fileio
from protocaffe import net as netlib


def run_both(tmp_path, text, inputs, outputs, opencv_text=None, opencv_blobs=None, seed=3):
    (tmp_path / "net.prototxt").write_text(text)
    (tmp_path / "opencv.prototxt").write_text(opencv_text or text)
    net = netlib.build_net(tmp_path / "net.prototxt", seed=seed)
    weights = net.to_proto()
    for lp in weights.layer:
        for array in (opencv_blobs or {}).get(lp.name, []):
            fileio.array_to_blob(array, blob=lp.blobs.add())
    fileio.write_binary(weights, tmp_path / "net.caffemodel")
    ours = net(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "opencv.prototxt"), str(tmp_path / "net.caffemodel"))
    for name, value in inputs.items():
        cv.setInput(value, name)
    producer = {t: lp.name for lp in net.param.layer for t in lp.top}  # OpenCV names outputs by layer
    theirs = cv.forward([producer[name] for name in outputs])
    return ({k: ours[k].detach().numpy() for k in outputs},
            {k: np.asarray(v) for k, v in zip(outputs, theirs)})
