"""The Faster R-CNN, R-FCN, YOLO, SphereFace and caffe-face dialects: their files named in the
log, their binary files (built byte by byte with the forks' own numbers) read with the forks'
meaning, BVLC's files unchanged."""
import struct

import pytest

from conftest import GOLDEN
from protocaffe import dialects, fileio, schema
from protocaffe.dialects import wire
from protocaffe.errors import CaffeError
from protocaffe.net import read_net_param
from protocaffe.proto import caffe_pb2

varint = wire._encode_varint


def field(number, wire_type, payload):
    if wire_type == wire.LENGTH:
        return varint(number << 3 | wire_type) + varint(len(payload)) + payload
    return varint(number << 3 | wire_type) + payload


def u(number, value):
    return field(number, wire.VARINT, varint(value))


def f(number, value):
    return field(number, wire.FIXED32, struct.pack("<f", value))


def layer(type_, *fields, name="l"):
    head = caffe_pb2.LayerParameter(name=name, type=type_).SerializeToString()
    return field(100, wire.LENGTH, head + b"".join(fields))


def read(tmp_path, *layers, dialect=None):
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(b"".join(layers))
    return dialects.read_binary(path, caffe_pb2.NetParameter, dialect=dialect).layer


ROI = u(1, 7) + u(2, 6) + f(3, 0.0625)  # pooled_h 7, pooled_w 6, spatial_scale 1/16
PSROI = f(1, 0.0625) + u(2, 21) + u(3, 7)  # spatial_scale, output_dim 21, group_size 7


def test_microsoft_caffe_numbers_move_inside_their_layer_types_only(tmp_path):
    """py-R-FCN's Caffe: roi_pooling 147 and smooth_l1_loss 148 (BVLC's swish and clip), psroi 149
    and box_annotator_ohem 150; a Swish layer's 147 keeps BVLC's meaning."""
    roi, smooth, psroi, ohem, swish = read(
        tmp_path,
        layer("ROIPooling", field(147, wire.LENGTH, ROI)),
        layer("SmoothL1Loss", field(148, wire.LENGTH, f(1, 3.0))),
        layer("PSROIPooling", field(149, wire.LENGTH, PSROI)),
        layer("BoxAnnotatorOHEM", field(150, wire.LENGTH, u(1, 128) + u(2, 0xFFFFFFFFFFFFFFFF))),
        layer("Swish", field(147, wire.LENGTH, f(1, 2.0))))
    p = schema.get(roi, "roi_pooling_param")
    assert (p.pooled_h, p.pooled_w, p.spatial_scale) == (7, 6, 0.0625) and not roi.HasField("swish_param")
    assert schema.get(smooth, "smooth_l1_loss_param").sigma == 3.0 and not smooth.HasField("clip_param")
    q = schema.get(psroi, "psroi_pooling_param")
    assert (q.spatial_scale, q.output_dim, q.group_size) == (0.0625, 21, 7)
    o = schema.get(ohem, "box_annotator_ohem_param")
    assert (o.roi_per_img, o.ignore_label) == (128, -1)
    assert swish.swish_param.beta == 2.0


@pytest.mark.parametrize("number", [10001, 10002, 149])
def test_psroi_pooling_read_from_rfcn_opencv_and_microsoft_numbers(tmp_path, number):
    (psroi,) = read(tmp_path, layer("PSROIPooling", field(number, wire.LENGTH, PSROI)))
    assert schema.get(psroi, "psroi_pooling_param").output_dim == 21


def test_a_field_at_10001_outside_psroi_pooling_stays_unknown(tmp_path):
    """Yahoo's open_nsfw Caffe wrote another field at 10001 (opencv/opencv#10530)."""
    (conv,) = read(tmp_path, layer("Convolution", field(10001, wire.LENGTH, u(5, 1))))
    assert not schema.has(conv, "psroi_pooling_param")


def test_faster_rcnn_numbers_read_as_they_are(tmp_path):
    roi, smooth, drop = read(tmp_path,
                             layer("ROIPooling", field(8266711, wire.LENGTH, ROI)),
                             layer("SmoothL1Loss", field(8266712, wire.LENGTH, f(1, 3.0))),
                             layer("Dropout", field(108, wire.LENGTH, f(1, 0.5) + u(2, 0))))
    assert schema.get(roi, "roi_pooling_param").pooled_w == 6
    assert schema.get(smooth, "smooth_l1_loss_param").sigma == 3.0
    assert schema.get(drop.dropout_param, "scale_train") is False


def test_yolo_and_face_numbers_move_inside_their_layer_types(tmp_path):
    reorg_gklz, reorg_eric, region, margin, center = read(
        tmp_path,
        layer("Reorg", field(147, wire.LENGTH, u(1, 2))),
        layer("Reorg", field(149, wire.LENGTH, u(1, 4) + u(2, 1))),
        layer("Region", field(214, wire.LENGTH, u(1, 4) + u(2, 80) + u(3, 5))),
        layer("MarginInnerProduct", field(147, wire.LENGTH, u(1, 10572) + u(2, 3) + f(5, 1000) + f(6, 0.12))),
        layer("CenterLoss", field(147, wire.LENGTH, u(1, 10572) + u(3, 1))))
    assert schema.get(reorg_gklz, "reorg_param").stride == 2
    r = schema.get(reorg_eric, "reorg_param")
    assert (r.stride, r.reverse) == (4, True)
    g = schema.get(region, "region_param")
    assert (g.coords, g.classes, g.num) == (4, 80, 5)
    m = schema.get(margin, "margin_inner_product_param")
    assert (m.num_output, m.type, m.base, m.gamma) == (10572, 3, 1000.0, pytest.approx(0.12))
    assert schema.get(center, "center_loss_param").num_output == 10572
    for lp in (reorg_gklz, margin, center):
        assert not lp.HasField("swish_param")


def rfcn_loss(mode, normalizer=None):
    """A LossParameter as R-FCN's Caffe writes it: normalization (3) with its enum, and
    pre_fixed_normalizer (4)."""
    body = u(3, mode) + (f(4, normalizer) if normalizer is not None else b"")
    return field(101, wire.LENGTH, body)


def test_rfcn_normalization_in_ohem_layers_reads_with_the_forks_enum(tmp_path):
    """R-FCN's PRE_FIXED is 3 (BVLC's NONE), its NONE 4; inside its own OHEM types always."""
    smooth, softmax = read(tmp_path, layer("SmoothL1LossOHEM", rfcn_loss(3, 128.0)),
                           layer("SoftmaxWithLossOHEM", rfcn_loss(4)))
    Mode = caffe_pb2.LossParameter
    assert smooth.loss_param.normalization == Mode.PRE_FIXED
    assert schema.get(smooth.loss_param, "pre_fixed_normalizer") == 128.0
    assert softmax.loss_param.normalization == Mode.NONE
    assert not schema.has(smooth.loss_param, "rfcn_normalization")


def test_rfcn_normalization_in_bvlc_layers_needs_the_dialect(tmp_path):
    """A SoftmaxWithLoss's value 3 is NONE for BVLC and PRE_FIXED for R-FCN: the wire cannot tell."""
    Mode = caffe_pb2.LossParameter
    (bvlc,) = read(tmp_path, layer("SoftmaxWithLoss", rfcn_loss(3)))
    assert bvlc.loss_param.normalization == Mode.NONE
    fixed, none = read(tmp_path, layer("SoftmaxWithLoss", rfcn_loss(3, 64.0)),
                       layer("SmoothL1Loss", rfcn_loss(4)), dialect="rfcn")
    assert fixed.loss_param.normalization == Mode.PRE_FIXED
    assert schema.get(fixed.loss_param, "pre_fixed_normalizer") == 64.0
    assert none.loss_param.normalization == Mode.NONE


def test_pre_fixed_in_text_and_both_normalization_fields_is_an_error(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "l" type: "SmoothL1LossOHEM" bottom: "a" bottom: "b" top: "loss" '
                    'loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 128 } }')
    lp = read_net_param(path).layer[0]
    assert lp.loss_param.normalization == caffe_pb2.LossParameter.PRE_FIXED
    assert schema.get(lp.loss_param, "pre_fixed_normalizer") == 128
    path.write_text('layer { name: "l" type: "SmoothL1LossOHEM" loss_param { normalization: NONE '
                    'rfcn_normalization: RFCN_NONE } }')
    with pytest.raises(CaffeError, match="layer 'l' sets loss_param.normalization twice"):
        read_net_param(path)


def test_bvlc_files_are_unchanged_by_every_layer_type_move():
    net = fileio.read_binary(GOLDEN / "nets" / "slim_caffenet.caffemodel", caffe_pb2.NetParameter)
    data = net.SerializeToString()
    assert wire.renumber(data, caffe_pb2.NetParameter.DESCRIPTOR, dialects.layer_type_moves()) == data


FILES = {
    "faster_rcnn": ('layer { name: "roi_pool5" type: "ROIPooling" bottom: "conv5" bottom: "rois" top: "pool5" '
                    'roi_pooling_param { pooled_w: 7 pooled_h: 7 spatial_scale: 0.0625 } }',
                    "Faster R-CNN (rbgirshick/caffe-fast-rcnn) (roi_pooling_param, type ROIPooling)"),
    "rfcn": ('layer { name: "psroi" type: "PSROIPooling" bottom: "rfcn_cls" bottom: "rois" top: "p" '
             'psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 } }',
             "R-FCN (daijifeng001/caffe-rfcn, Microsoft/caffe) (psroi_pooling_param, type PSROIPooling)"),
    "yolo": ('layer { name: "reorg" type: "Reorg" bottom: "a" top: "b" reorg_param { stride: 2 } }',
             "YOLOv2 Caffe ports (Reorg, Region) (reorg_param, type Reorg)"),
    "sphereface": ('layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6" '
                   'top: "lambda" margin_inner_product_param { num_output: 10572 type: QUADRUPLE } }',
                   "SphereFace (wy1iu/sphereface) (margin_inner_product_param, type MarginInnerProduct)"),
    "caffe_face": ('layer { name: "center_loss" type: "CenterLoss" bottom: "fc5" bottom: "label" top: "c" '
                   'center_loss_param { num_output: 10572 } }',
                   "caffe-face center loss (ydwen/caffe-face) (center_loss_param, type CenterLoss)"),
}


@pytest.mark.parametrize("key", sorted(FILES))
def test_dialect_named_in_the_log(tmp_path, logged, key):
    text, name = FILES[key]
    path = tmp_path / f"{key}.prototxt"
    path.write_text(text)
    read_net_param(path)
    lines = {r.getMessage() for r in logged.records if r.getMessage().startswith("Reading ")}
    assert lines == {f"Reading {path} as {name}"}
    assert dialects.by_key(key).name == name.rsplit(" (", 1)[0]
