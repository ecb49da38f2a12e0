"""AnnotatedData (the SSD fork's data layer) against the fork itself and hand-computed references.

The golden runs (tests/data/golden/ssd/runs/annotated_data, README.txt there) were made by the
real fork through pycaffe: caffe.set_random_seed(S), a TRAIN net, three forwards. The augmented
run re-encodes images as JPEG after distortion, expansion and cropping; with the pinned OpenCV
(opencv-python-headless 4.14, libjpeg-turbo 3.1) its codec gives the fork's bytes, so pixels
are compared exactly, as are the label rows.
"""
import cv2
import lmdb
import numpy as np
import pytest

import protocaffe as caffe
from conftest import GOLDEN
from protocaffe import TRAIN, TEST, caffe_random
from protocaffe.data.annotated import boxes as bbox, sampler
from protocaffe.errors import CaffeError
from protocaffe.fileio import array_to_datum
from protocaffe.net import build_net
from protocaffe.proto.forks import ssd_pb2

RUNS = GOLDEN / "ssd" / "runs" / "annotated_data"
F = np.float32


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("cfg, seed", [("plain", 11), ("augment", 12)])
def test_batches_are_the_forks(cfg, seed, workers, monkeypatch):
    monkeypatch.chdir(RUNS)
    monkeypatch.setenv("PROTOCAFFE_DATA_WORKERS", workers)
    golden = np.load(RUNS / "io.npz")
    caffe.set_random_seed(seed)
    net = caffe.Net(f"data_{cfg}.prototxt", caffe.TRAIN)
    for k in range(3):
        net.forward()
        np.testing.assert_array_equal(net.blobs["label"].data, golden[f"{cfg}_batch{k}_label"])
        np.testing.assert_array_equal(net.blobs["data"].data, golden[f"{cfg}_batch{k}_data"])
    net.layers[0].close()


def test_another_seed_draws_otherwise(monkeypatch):
    monkeypatch.chdir(RUNS)
    monkeypatch.setenv("PROTOCAFFE_DATA_WORKERS", "0")
    golden = np.load(RUNS / "io.npz")
    caffe.set_random_seed(13)
    net = caffe.Net("data_augment.prototxt", caffe.TRAIN)
    net.forward()
    assert not np.array_equal(net.blobs["data"].data, golden["augment_batch0_data"])


def test_unseeded_batches_depend_on_the_batch_alone(monkeypatch):
    """Unseeded, batch k draws from (seed, k): the same batches in the training thread and in
    two worker processes."""
    monkeypatch.chdir(RUNS)
    net = build_net("data_augment.prototxt", TRAIN)
    layer = net.layers["data"]
    runs = []
    for workers in (0, 2):
        layer.close()
        layer._next, layer.workers = 0, workers
        runs.append([tuple(t.numpy().copy() for t in layer()) for _ in range(4)])
    layer.close()
    for (d0, l0), (d1, l1) in zip(*runs):
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(l0, l1)
    assert not np.array_equal(runs[0][0][0], runs[0][1][0])


# ---- hand-made databases -------------------------------------------------------------------

def write_db(path, records):
    """records: (image (H, W, 3) uint8, [(label, xmin, ymin, xmax, ymax, difficult)], encode or None)."""
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, (img, objects, encode) in enumerate(records):
            anno = ssd_pb2.AnnotatedDatum(type=ssd_pb2.AnnotatedDatum.BBOX)
            d = anno.datum
            d.channels, d.height, d.width, d.label = img.shape[2], img.shape[0], img.shape[1], -1
            if encode:
                d.data, d.encoded = cv2.imencode("." + encode, img)[1].tobytes(), True
            else:
                d.data, d.encoded = img.transpose(2, 0, 1).tobytes(), False
            for label, *box, difficult in objects:
                group = next((g for g in anno.annotation_group if g.group_label == label), None)
                group = group or anno.annotation_group.add(group_label=label)
                a = group.annotation.add(instance_id=len(group.annotation))
                a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = box
                a.bbox.difficult = difficult
            txn.put(f"{i:08d}".encode(), anno.SerializeToString())
    env.close()
    return str(path)


def make_net(tmp_path, db, transform, batch=1, extra="", phase="TRAIN"):
    path = tmp_path / "net.prototxt"
    path.write_text(f'''layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  include {{ phase: {phase} }} transform_param {{ {transform} }}
  data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} annotated_data_param {{ {extra} }} }}''')
    return path


def forward(path, phase=TRAIN, seed=None, batches=1):
    net = build_net(str(path), phase, seed=seed)
    net.layers["data"].workers = 0
    out = [net() for _ in range(batches)]
    return [(o["data"].numpy(), o["label"].numpy()) for o in out]


def wide_image(value=0):
    """A 20x40 image: left half dark, right half bright, one object box."""
    img = np.full((20, 40, 3), value, np.uint8)
    img[:, 20:] = 200
    return img


def test_fit_large_size_and_pad(tmp_path):
    """40x20 into 32x32: scaled by 0.8 to 32x16, 8 rows of pad_value above and below; a box
    (0.25, 0.5)-(0.75, 1) lands at y 8 + 0.5 * 16 = 16 and 8 + 16 = 24 of 32."""
    db = write_db(tmp_path / "db", [(wide_image(), [(1, 0.25, 0.5, 0.75, 1.0, False)], None)])
    net = make_net(tmp_path, db, "mean_value: 10 resize_param { resize_mode: FIT_LARGE_SIZE_AND_PAD "
                                 "height: 32 width: 32 pad_value: 50 }")
    data, label = forward(net)[0]
    np.testing.assert_array_equal(label, [[[[0, 1, 0, 0.25, 0.5, 0.75, 0.75, 0]]]])
    assert data.shape == (1, 3, 32, 32)
    assert np.all(data[0, :, :8] == 40) and np.all(data[0, :, 24:] == 40)
    assert np.all(data[0, :, 8:24, :15] == -10) and np.all(data[0, :, 8:24, 17:] == 190)


@pytest.mark.parametrize("mode, expected", [("MIRRORED", "reflect"), ("REPEAT_NEAREST", "edge")])
def test_pad_modes(tmp_path, mode, expected):
    img = np.random.default_rng(0).integers(0, 256, (16, 32, 3)).astype(np.uint8)
    db = write_db(tmp_path / "db", [(img, [], None)])
    net = make_net(tmp_path, db, f"resize_param {{ resize_mode: FIT_LARGE_SIZE_AND_PAD height: 32 width: 32 "
                                 f"pad_mode: {mode} interp_mode: NEAREST }}")
    data = forward(net)[0][0][0].transpose(1, 2, 0)
    np.testing.assert_array_equal(data, np.pad(img, ((8, 8), (0, 0), (0, 0)), mode=expected))


def test_fit_small_size_keeps_each_images_shape(tmp_path):
    """FIT_SMALL_SIZE (batch 1): the shorter side to the size asked, the other keeping the aspect ratio."""
    tall = np.zeros((40, 20, 3), np.uint8)
    db = write_db(tmp_path / "db", [(wide_image(), [(2, 0.25, 0.5, 0.75, 1.0, True)], "png"),
                                    (tall, [], "png")])
    net = make_net(tmp_path, db, "resize_param { resize_mode: FIT_SMALL_SIZE height: 16 width: 16 }")
    (d0, l0), (d1, l1) = forward(net, batches=2)
    assert d0.shape == (1, 3, 16, 32) and d1.shape == (1, 3, 32, 16)
    np.testing.assert_array_equal(l0, [[[[0, 2, 0, 0.25, 0.5, 0.75, 1, 1]]]])
    np.testing.assert_array_equal(l1, np.full((1, 1, 1, 8), -1))


def test_centre_crop_and_emit_constraint(tmp_path):
    """TEST phase, crop_size 16 of 20x40: the window at (2, 12), i.e. (0.3, 0.1)-(0.7, 0.9). A box
    whose centre lies inside is projected and clipped; one whose centre lies outside is dropped."""
    objects = [(1, 0.25, 0.5, 0.75, 1.0, False), (2, 0.0, 0.0, 0.2, 0.2, False)]
    db = write_db(tmp_path / "db", [(wide_image(), objects, None)])
    net = make_net(tmp_path, db, "crop_size: 16 emit_constraint { emit_type: CENTER }", phase="TEST")
    data, label = forward(net, TEST)[0]
    np.testing.assert_allclose(label, [[[[0, 1, 0, 0, 0.5, 1, 1, 0]]]], atol=1e-6)
    np.testing.assert_array_equal(data[0, 0], wide_image()[2:18, 12:28, 0])


def test_min_overlap_emit_constraint(tmp_path):
    """MIN_OVERLAP keeps a box when the crop covers more than emit_overlap of it: (0, 0)-(0.4, 0.2)
    is covered 0.01 / 0.08 = 0.125 by the window (0.3, 0.1)-(0.7, 0.9), so 0.1 keeps it and 0.2
    drops it."""
    db = write_db(tmp_path / "db", [(wide_image(), [(1, 0.0, 0.0, 0.4, 0.2, False)], None)])
    for overlap, rows in ((0.1, [[0, 1, 0, 0, 0, 0.25, 0.125, 0]]), (0.2, [[-1] * 8])):
        net = make_net(tmp_path, db, f"crop_size: 16 emit_constraint {{ emit_type: MIN_OVERLAP "
                                     f"emit_overlap: {overlap} }}", phase="TEST")
        np.testing.assert_allclose(forward(net, TEST)[0][1].reshape(-1, 8), rows, atol=1e-6)


def test_mirror_and_crop_draws_are_the_transformers(tmp_path):
    """Seeded, the transformer's stream is mt19937(InitRand's second value); per image it draws
    the mirror coin, then the crop's row and column (Rand(n) = output % n); the boxes follow."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (20, 40, 3)).astype(np.uint8) for _ in range(4)]
    db = write_db(tmp_path / "db", [(img, [(1, 0.3, 0.3, 0.7, 0.7, False)], None) for img in images])
    net = make_net(tmp_path, db, "mirror: true crop_size: 16", batch=2)
    batches = forward(net, seed=5, batches=2)
    setup = caffe_random.Stream(5).next(4)  # the reader's thread, InitRand, InitRand, the prefetch thread
    draws = caffe_random.Stream(int(setup[2])).next(12).reshape(4, 3)
    for i, img in enumerate(images):
        data, label = batches[i // 2][0][i % 2], batches[i // 2][1].reshape(-1, 8)[i % 2]
        flip, y, x = int(draws[i, 0]) % 2, int(draws[i, 1]) % 5, int(draws[i, 2]) % 25
        window = img[y:y + 16, x:x + 16].transpose(2, 0, 1)
        np.testing.assert_array_equal(data, window[:, :, ::-1] if flip else window)
        frame = np.array([x / 40, y / 20, (x + 16) / 40, (y + 16) / 20], np.float32)
        box, _, _ = bbox.project(frame, np.array([[0.3, 0.3, 0.7, 0.7]], np.float32))
        if flip:
            box = np.array([[1 - box[0, 2], box[0, 1], 1 - box[0, 0], box[0, 3]]], np.float32)
        np.testing.assert_array_equal(label[3:7], box[0])


def test_noise_salt_and_pepper_and_decolorize(tmp_path):
    """noise_param: decolorize makes the channels equal; saltpepper sets floor(fraction * w * h)
    pixels, drawn as (rand() % w, rand() % h) from the prefetch thread's stream, to the value."""
    img = np.random.default_rng(2).integers(0, 200, (8, 8, 3)).astype(np.uint8)
    db = write_db(tmp_path / "db", [(img, [], None)])
    net = make_net(tmp_path, db, "noise_param { decolorize: true saltpepper: true "
                                 "saltpepper_param { fraction: 0.1 value: 255 } }")
    data = forward(net, seed=3)[0][0][0]
    prefetch = caffe_random.Stream(int(caffe_random.Stream(3).next(2)[1]))  # no InitRand: no mirror, no crop
    raw = prefetch.next(12).reshape(6, 2)
    salt = np.zeros((8, 8), bool)
    salt[raw[:, 1] % 8, raw[:, 0] % 8] = True
    assert np.all(data[:, salt] == 255)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(data[0][~salt], gray[~salt])
    assert np.array_equal(data[0], data[1]) and np.array_equal(data[1], data[2])


def test_a_batch_without_boxes_has_one_row_of_minus_one_and_records_without_type_their_labels(tmp_path):
    db = write_db(tmp_path / "db", [(wide_image(), [], "png")])
    assert np.array_equal(forward(make_net(tmp_path, db, ""))[0][1], np.full((1, 1, 1, 8), -1))
    env = lmdb.open(str(tmp_path / "plain"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        anno = ssd_pb2.AnnotatedDatum()
        anno.datum.CopyFrom(array_to_datum(np.zeros((3, 4, 4), np.uint8), 7))
        txn.put(b"0", anno.SerializeToString())
    env.close()
    assert forward(make_net(tmp_path, str(tmp_path / "plain"), "", batch=2))[0][1].tolist() == [7, 7]


@pytest.mark.parametrize("transform, extra, message", [
    ("resize_param { height: 0 width: 8 }", "", "resize_param needs height and width"),
    ("expand_param { max_expand_ratio: 1 }", "", "max_expand_ratio must be greater than 1"),
    ("distort_param { contrast_lower: 2 contrast_upper: 1 }", "", "0 <= lower <= upper"),
    ("noise_param { convert_to_lab: true }", "", "convert_to_lab is not supported"),
    ("", "batch_sampler { sampler { min_scale: 0 } }", "0 < min_scale <= max_scale <= 1"),
    ("resize_param { resize_mode: FIT_SMALL_SIZE height: 8 width: 8 }", "", "needs batch_size 1"),
])
def test_bad_parameters_are_one_line_errors(tmp_path, transform, extra, message):
    db = write_db(tmp_path / "db", [(wide_image(), [], None)])
    net = make_net(tmp_path, db, transform, batch=2, extra=extra)
    with pytest.raises(CaffeError, match=message) as e:
        build_net(str(net), TRAIN)
    assert "layer 'data' (type AnnotatedData)" in str(e.value) and "\n" not in str(e.value)


# ---- the pieces ----------------------------------------------------------------------------

def reference_samples(stream, batch_sampler, objects):
    """The fork's GenerateSamples written out trial by trial with Caffe's scalar draws."""
    s, c = batch_sampler.sampler, batch_sampler.sample_constraint
    found = []
    for _ in range(batch_sampler.max_trials):
        if batch_sampler.HasField("max_sample") and len(found) >= batch_sampler.max_sample:
            break
        scale = caffe_random.uniform(stream, 1, s.min_scale, s.max_scale)[0]
        ratio = caffe_random.uniform(stream, 1, s.min_aspect_ratio, s.max_aspect_ratio)[0]
        ratio = min(max(ratio, F(float(scale) ** 2)), F(1 / float(scale) ** 2))
        w, h = F(scale * np.sqrt(ratio)), F(scale / np.sqrt(ratio))
        x = caffe_random.uniform(stream, 1, 0, max(F(1) - w, F(0)))[0]
        y = caffe_random.uniform(stream, 1, 0, max(F(1) - h, F(0)))[0]
        box = np.array([x, y, x + w, y + h], np.float32)
        if reference_satisfied(box, objects, c):
            found.append(box)
    return np.array(found, np.float32).reshape(-1, 4)


def reference_satisfied(box, objects, c):
    """SatisfySampleConstraint object by object, with the fork's found flag."""
    kinds = [k for k in ("jaccard_overlap", "sample_coverage", "object_coverage")
             if c.HasField("min_" + k) or c.HasField("max_" + k)]
    if not kinds:
        return True
    found = False
    for obj in objects:
        for kind in kinds:
            ix0, iy0 = max(box[0], obj[0]), max(box[1], obj[1])
            ix1, iy1 = min(box[2], obj[2]), min(box[3], obj[3])
            inter = F(F(ix1 - ix0) * F(iy1 - iy0)) if ix1 > ix0 and iy1 > iy0 else F(0)
            area_box, area_obj = F(F(box[2] - box[0]) * F(box[3] - box[1])), F(F(obj[2] - obj[0]) * F(obj[3] - obj[1]))
            value = {"jaccard_overlap": F(inter / F(F(area_box + area_obj) - inter)),
                     "sample_coverage": F(inter / area_box), "object_coverage": F(inter / area_obj)}[kind]
            if inter == 0:
                value = F(0)
            if (c.HasField("min_" + kind) and value < F(getattr(c, "min_" + kind))) or \
                    (c.HasField("max_" + kind) and value > F(getattr(c, "max_" + kind))):
                break
            found = True
        if found:
            return True
    return found


@pytest.mark.parametrize("case", range(24))
def test_samplers_draw_as_the_fork_writes_them(case):
    rng = np.random.default_rng(case)
    bs = ssd_pb2.BatchSampler(max_trials=int(rng.integers(1, 60)))
    if case % 3:
        bs.max_sample = int(rng.integers(1, 4))
    low = F(rng.choice([0.1, 0.3, 1.0]))
    bs.sampler.min_scale, bs.sampler.max_scale = low, max(low, F(rng.choice([0.5, 1.0])))
    bs.sampler.min_aspect_ratio, bs.sampler.max_aspect_ratio = 0.5, 2
    for kind in rng.choice(["jaccard_overlap", "sample_coverage", "object_coverage"], int(rng.integers(0, 3))):
        setattr(bs.sample_constraint, rng.choice(["min_", "max_"]) + kind, F(rng.uniform(0.1, 0.9)))
    corners = np.sort(rng.uniform(0, 1, (int(rng.integers(0, 4)), 2, 2)), axis=1)
    objects = corners.transpose(0, 2, 1).reshape(-1, 4)[:, [0, 2, 1, 3]].astype(np.float32)
    ours, theirs = caffe_random.Stream(case), caffe_random.Stream(case)
    found = sampler.generate(ours, bs, objects, bbox.unset_sizes(len(objects)))
    np.testing.assert_array_equal(found, reference_samples(theirs, bs, objects))
    assert ours.position == theirs.position


def test_uint8_batches_normalized_by_the_device_path_give_the_same_numbers(monkeypatch):
    """With device_transform (forced here on the CPU; on a GPU it is the default), workers hand
    over the uint8 images and transform.apply subtracts the mean there: the fork's numbers still."""
    monkeypatch.chdir(RUNS)
    golden = np.load(RUNS / "io.npz")
    caffe.set_random_seed(12)
    net = caffe.Net("data_augment.prototxt", caffe.TRAIN)
    layer = net.layers[0]
    layer.device_transform, layer.workers = True, 1
    for k in range(2):
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, golden[f"augment_batch{k}_data"])
    layer.close()
