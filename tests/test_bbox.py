"""protocaffe.bbox, the SSD fork's box arithmetic, on cases worked by hand (the layers that use it
are checked against the fork in test_ssd_golden.py)."""
import numpy as np
import pytest

from protocaffe import bbox


def test_overlap_sizes_and_the_pixel_convention():
    a, b = [[0, 0, 2, 2]], [[1, 1, 3, 3], [2.5, 0, 3, 1], [1, 1, 0.5, 3]]
    # 1 / (4 + 4 - 1); apart; an inverted box has size 0 and no overlap
    np.testing.assert_allclose(bbox.jaccard(a, b)[0], [1 / 7, 0, 0], rtol=1e-6)
    # in pixels a box from 0 to 2 is 3 wide, boxes apart still share one pixel, and the
    # inverted box (size 0) shares 0.5 + 1 by 1 + 1 pixels
    np.testing.assert_allclose(bbox.jaccard(a, b, pixels=True)[0], [4 / (9 + 9 - 4), 1 / (9 + 3 - 1), 1 / (9 - 1)],
                               rtol=1e-6)
    assert bbox.sizes([[0, 0, 2, 3], [1, 0, 0, 1]]).tolist() == [6, 0]


@pytest.mark.parametrize("code", [bbox.CORNER, bbox.CENTER_SIZE, bbox.CORNER_SIZE])
@pytest.mark.parametrize("in_target", [False, True])
def test_decode_inverts_encode(code, in_target):
    priors = np.array([[0.1, 0.2, 0.5, 0.4], [0.3, 0.3, 0.9, 1.0]], np.float32)
    var = np.array([[0.1, 0.1, 0.2, 0.2]] * 2, np.float32)
    boxes = np.array([[0.15, 0.1, 0.45, 0.5], [0.2, 0.35, 0.8, 0.9]], np.float32)
    offsets = bbox.encode(priors, var, boxes, code, in_target)
    np.testing.assert_allclose(bbox.decode(priors, var, offsets, code, in_target), boxes, atol=1e-6)


def test_center_size_encoding_by_hand():
    # prior centre (0.3, 0.3) size 0.4 x 0.2; box centre (0.4, 0.25) size 0.2 x 0.4
    offsets = bbox.encode([[0.1, 0.2, 0.5, 0.4]], [[0.1, 0.1, 0.2, 0.2]], [[0.3, 0.05, 0.5, 0.45]],
                          bbox.CENTER_SIZE, False)
    np.testing.assert_allclose(offsets[0], [0.1 / 0.4 / 0.1, -0.05 / 0.2 / 0.1, np.log(0.5) / 0.2, np.log(2) / 0.2],
                               rtol=1e-5)


def test_bipartite_then_per_prediction_matching():
    gt = np.array([[0, 0, 1, 1], [2, 0, 3, 1]]) / 10
    preds = np.array([[0, 0, 1, 0.9],      # 0.9 with gt 0
                      [0, 0, 1, 0.8],      # 0.8 with gt 0
                      [2, 0, 3, 0.5],      # 0.5 with gt 1
                      [5, 5, 6, 6],        # no overlap
                      [-0.5, 0, 0.5, 1]]) / 10  # 1/3 with gt 0; crosses the border
    idx, ov = bbox.match(gt, preds, bbox.BIPARTITE, 0.5)
    assert idx.tolist() == [0, -1, 1, -1, -1]  # each gt takes its best prediction
    np.testing.assert_allclose(ov, [0.9, 0.8, 0.5, 0, 1 / 3], rtol=1e-6)
    idx, _ = bbox.match(gt, preds, bbox.BIPARTITE + 1, 0.5)  # PER_PREDICTION
    assert idx.tolist() == [0, 0, 1, -1, -1]
    idx, ov = bbox.match(gt, preds, bbox.BIPARTITE + 1, 0.3, ignore_cross_boundary=True)
    assert idx.tolist() == [0, 0, 1, -1, -2] and ov[4] == 0


def test_nms_fast_threshold_top_k_and_eta():
    boxes = [[0, 0, 1, 1], [0, 0, 1, 0.7], [0, 0, 1, 0.45], [2, 2, 3, 3]]
    scores = [0.9, 0.8, 0.7, 0.1]
    # overlaps with box 0: 0.7 and 0.45; box 1 with box 2: 0.45 / 0.7
    assert bbox.nms_fast(boxes, scores, 0.0, 0.6) == [0, 2, 3]
    assert bbox.nms_fast(boxes, scores, 0.2, 0.6) == [0, 2]          # box 3 under the threshold
    assert bbox.nms_fast(boxes, scores, 0.0, 0.6, top_k=2) == [0]    # only the best 2 visited
    # 0.75, then 0.6 after box 0 (box 1 goes), then 0.48 after box 2 (stops above 0.5 only)
    assert bbox.nms_fast(boxes, scores, 0.0, 0.75, eta=0.8) == [0, 2, 3]
    assert bbox.nms_fast(boxes, scores, 0.0, 0.75) == [0, 1, 2, 3]  # box 2: 0.643 with box 1


def test_hard_example_nms_keeps_none_with_top_k_0_and_drops_tiny_boxes():
    boxes = [[0, 0, 1, 1], [0, 0, 1e-3, 1e-3], [0, 0, 1, 0.9]]
    assert bbox.nms(boxes, [0.5, 0.9, 0.4], 0.5, -1) == [0]
    assert bbox.nms(boxes, [0.5, 0.9, 0.4], 0.95, -1) == [0, 2]
    assert bbox.nms(boxes, [0.5, 0.9, 0.4], 0.5, 0) == []


@pytest.mark.parametrize("pairs, num_pos, expected", [
    # precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3
    ([(0.9, 1), (0.8, 0), (0.7, 1)], 3, {"11point": 6 / 11, "MaxIntegral": 5 / 9, "Integral": 5 / 9}),
    # precision 0, 1/2, 2/3 at recall 0, 1/2, 1
    ([(0.9, 0), (0.8, 1), (0.7, 1)], 2, {"11point": 2 / 3, "MaxIntegral": 2 / 3, "Integral": 7 / 12}),
    ([(0.7, 1), (0.9, 0), (0.8, 1)], 2, {"11point": 2 / 3, "MaxIntegral": 2 / 3, "Integral": 7 / 12}),
    ([], 2, {"11point": 0, "MaxIntegral": 0, "Integral": 0}),
])
def test_average_precision_by_hand(pairs, num_pos, expected):
    for version, value in expected.items():
        assert bbox.average_precision(pairs, num_pos, version) == pytest.approx(value, rel=1e-6), version
