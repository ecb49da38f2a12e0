"""The Data layer against Caffe's Data-layer batches; its augmentation, position, PCA noise and errors."""

import lmdb
import numpy as np
import pytest
import torch

import protocaffe
from conftest import GOLDEN, cuda
from protocaffe.data.db import Cursor, decode_datum, open_lmdb
from protocaffe.fileio import array_to_datum, parse_text, write_mean
from protocaffe.net import build_net
from protocaffe.proto import caffe_pb2

CASES = {  # the settings README.md gives for data_test.npz
    "meanfile": ("data/train_lmdb", 'crop_size: 28 scale: 0.015625 mean_file: "data/mean.binaryproto"'),
    "meanvalue": ("data/train_lmdb", "crop_size: 28 mean_value: 104 mean_value: 117 mean_value: 123"),
    "encoded_nocrop": ("data/train_lmdb_enc", 'mean_file: "data/mean.binaryproto"'),
}
MODES = {  # how the batch is made: worker processes, the calling thread, or normalized by torch
    "workers": {"workers": 2},
    "sync": {"workers": 0},
    "device": {"workers": 1, "device_transform": True},
}


def data_net(source, transform="", phase=caffe_pb2.TEST, batch=8, extra="backend: LMDB", seed=5, tops=2,
             **mode):
    top = 'top: "data" top: "label"' if tops == 2 else 'top: "data"'
    text = (f'layer {{ name: "data" type: "Data" {top} transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} {extra} }} }}')
    net = build_net(parse_text(text, caffe_pb2.NetParameter), phase, seed=seed)
    for name, value in mode.items():
        setattr(data_layer(net), name, value)
    return net


def data_layer(net):
    return net.layer_by_name()["data"]


def records(path, n):
    cursor = Cursor(path)
    return [decode_datum(cursor.next()[1], path) for _ in range(n)]


def run_batches(net, n):
    out = [net() for _ in range(n)]
    return np.stack([o["data"].cpu().numpy() for o in out]), np.stack([o["label"].cpu().numpy() for o in out])


def make_lmdb(path, values):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(f"{i:08d}".encode(), value)
    env.close()
    return str(path)


# ---- equal to Caffe -----------------------------------------------------------

@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_test_phase_batches_equal_caffe(golden_cwd, case, mode):
    ref = np.load(GOLDEN / "data" / "data_test.npz")
    data, labels = run_batches(data_net(*CASES[case], **MODES[mode]), 3)
    for i in range(3):
        np.testing.assert_array_equal(data[i], ref[f"{case}_data_{i}"])
        np.testing.assert_array_equal(labels[i], ref[f"{case}_label_{i}"])


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("case", sorted(CASES))
def test_test_phase_batches_equal_caffe_on_cuda(golden_cwd, case):
    ref = np.load(GOLDEN / "data" / "data_test.npz")
    net = data_net(*CASES[case]).to("cuda")
    for i in range(3):
        out = net()
        assert out["data"].device.type == "cuda" and out["label"].device.type == "cuda"
        np.testing.assert_array_equal(out["data"].cpu().numpy(), ref[f"{case}_data_{i}"])
        np.testing.assert_array_equal(out["label"].cpu().numpy(), ref[f"{case}_label_{i}"])


def test_top_shapes_come_from_the_first_record_and_the_crop(golden_cwd):
    assert data_net(*CASES["meanfile"]).blob_shapes == {"data": (8, 3, 28, 28), "label": (8,)}
    assert data_net("data/train_lmdb_enc", tops=1, batch=3).blob_shapes == {"data": (3, 3, 32, 32)}
    assert data_net("data/train_lmdb_enc", tops=1)()["data"].dtype == torch.float32


# ---- augmentation ---------------------------------------------------------------

def find_window(image, crop, size):
    """(y, x, mirrored) of every place ``crop`` is cut from ``image``."""
    h, w = image.shape[1:]
    return [(y, x, flip) for y in range(h - size + 1) for x in range(w - size + 1) for flip in (False, True)
            if np.array_equal(image[:, y:y + size, x:x + size][..., ::-1] if flip else
                              image[:, y:y + size, x:x + size], crop)]


def test_train_crops_lie_inside_and_about_half_are_mirrored(golden_cwd):
    images = np.stack([img for img, _ in records("data/train_lmdb", 40)]).astype(np.float32)
    data, _ = run_batches(data_net("data/train_lmdb", "crop_size: 20 mirror: true", caffe_pb2.TRAIN,
                                   batch=40), 4)
    places = []
    for batch in data:
        for image, crop in zip(images, batch):
            hits = find_window(image, crop, 20)
            assert hits, "a crop that is not a window of its image"
            places.append(hits[0])
    mirrored = sum(flip for _, _, flip in places)
    assert 55 <= mirrored <= 105  # about half of 160
    assert len({(y, x) for y, x, _ in places}) > 40  # random offsets, all over the 13 x 13 range
    assert max(y for y, _, _ in places) == 12 and min(x for _, x, _ in places) == 0


def test_test_phase_crops_the_centre_and_still_mirrors(golden_cwd):
    images = np.stack([img for img, _ in records("data/train_lmdb", 40)]).astype(np.float32)
    data, _ = run_batches(data_net("data/train_lmdb", "crop_size: 20 mirror: true", batch=40), 2)
    flips = []
    for batch in data:
        for image, crop in zip(images, batch):
            centre = image[:, 6:26, 6:26]
            assert np.array_equal(crop, centre) or np.array_equal(crop, centre[..., ::-1])
            flips.append(not np.array_equal(crop, centre))
    assert 20 <= sum(flips) <= 60


def test_scale_and_mean_value_arithmetic_is_caffes(golden_cwd):
    images = np.stack([img for img, _ in records("data/train_lmdb", 8)])
    out = data_net("data/train_lmdb", "scale: 0.00390625 mean_value: 100.5")()["data"].numpy()
    np.testing.assert_array_equal(out, (images.astype(np.float32) - np.float32(100.5)) * np.float32(0.00390625))


@pytest.mark.parametrize("transform", ["crop_size: 24 mirror: true mean_file: 'data/mean.binaryproto' scale: 0.3",
                                       "mirror: true mean_value: 1 mean_value: 2 mean_value: 3"])
def test_same_seed_same_batches_whatever_the_workers(golden_cwd, transform):
    runs = [run_batches(data_net("data/train_lmdb", transform, caffe_pb2.TRAIN, batch=16, workers=w), 4)[0]
            for w in (0, 1, 3)]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    other = run_batches(data_net("data/train_lmdb", transform, caffe_pb2.TRAIN, batch=16, seed=6), 4)[0]
    assert not np.array_equal(runs[0], other)


def test_force_gray_and_force_color_decode_encoded_datums(golden_cwd, logged):
    import cv2
    gray = data_net("data/train_lmdb_enc", "force_gray: true", batch=2)()["data"].numpy()
    first = caffe_pb2.Datum.FromString(Cursor("data/train_lmdb_enc").next()[1])
    expected = cv2.imdecode(np.frombuffer(first.data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert gray.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(gray[0, 0], expected)
    raw = data_net("data/train_lmdb", "force_gray: true", batch=2)
    assert raw.blob_shapes["data"] == (2, 3, 32, 32)  # as Caffe: the flags leave raw Datums alone
    assert "apply only to encoded Datums" in logged.text


def test_float_data_datums(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 2, 5, 6)).astype(np.float32)
    source = make_lmdb(tmp_path / "f", [array_to_datum(im, i).SerializeToString() for i, im in enumerate(images)])
    out = data_net(source, "crop_size: 3 mean_value: 0.5 scale: 2", batch=4)()
    np.testing.assert_array_equal(out["data"].numpy(), (images[:, :, 1:4, 1:4] - np.float32(0.5)) * np.float32(2))
    np.testing.assert_array_equal(out["label"].numpy(), [0, 1, 2, 3])


# ---- position -------------------------------------------------------------------

def test_position_persists_across_forwards_and_wraps(golden_cwd):
    labels = [label for _, label in records("data/train_lmdb", 40)]
    net = data_net("data/train_lmdb", batch=16)
    got = np.concatenate([net()["label"].numpy() for _ in range(5)])  # 80 records of 40
    np.testing.assert_array_equal(got, labels + labels)


def test_changing_workers_or_device_path_mid_run_continues_the_stream(golden_cwd):
    transform = "crop_size: 24 mirror: true mean_file: 'data/mean.binaryproto'"
    expected = run_batches(data_net("data/train_lmdb", transform, caffe_pb2.TRAIN, batch=12), 6)[0]
    net = data_net("data/train_lmdb", transform, caffe_pb2.TRAIN, batch=12)
    layer, got = data_layer(net), []
    for i, (workers, on_device) in enumerate([(1, None), (0, None), (2, True), (2, True), (1, False), (0, True)]):
        layer.workers, layer.device_transform = workers, on_device
        got.append(net()["data"].numpy())
    np.testing.assert_array_equal(np.stack(got), expected)


def test_rand_skip_is_ignored_as_in_caffe_1_0(golden_cwd):
    """Caffe 1.0's DataLayer has no rand_skip (it went with the DataReader rewrite): the
    first batch is the first records, whatever the seed."""
    labels = np.array([label for _, label in records("data/train_lmdb", 10)])
    for seed in range(4):
        got = data_net("data/train_lmdb", batch=10, extra="backend: LMDB rand_skip: 30", seed=seed)()["label"]
        np.testing.assert_array_equal(got.numpy(), labels)


# ---- PCA lighting -----------------------------------------------------------------

def fixture_pca(path):
    """numpy's eigen-decomposition of the pixel covariance of an LMDB, intensities in [0, 1]."""
    with open_lmdb(path).begin() as txn:
        images = [decode_datum(value, path)[0] for _, value in txn.cursor()]
    pixels = np.concatenate([image.reshape(image.shape[0], -1) for image in images], 1) / 255.0
    values, vectors = np.linalg.eigh(np.cov(pixels, bias=True))
    return values[::-1], vectors[:, ::-1].T


def test_pca_lighting_adds_one_colour_shift_per_image_in_train_only(golden_cwd, tmp_path):
    from protocaffe.cli import main
    from protocaffe.data.pca import read_pca
    assert main(["compute_pca", "data/train_lmdb", str(tmp_path / "pca.binaryproto")]) == 0
    values, vectors = read_pca(tmp_path / "pca.binaryproto")
    expected_values, expected_vectors = fixture_pca("data/train_lmdb")
    np.testing.assert_allclose(values, expected_values, rtol=1e-5)
    signs = np.sign((vectors * expected_vectors).sum(1))  # an eigenvector is known up to its sign
    np.testing.assert_allclose(vectors * signs[:, None], expected_vectors, atol=1e-5)
    pca = f'pca_file: "{tmp_path / "pca.binaryproto"}" pca_std: 0.5'
    transform = "crop_size: 28 mirror: true scale: 0.5 mean_value: 100"
    plain = data_net("data/train_lmdb", transform, caffe_pb2.TRAIN, batch=40)()["data"].numpy()
    shifted = data_net("data/train_lmdb", f"{transform} {pca}", caffe_pb2.TRAIN, batch=40)()["data"].numpy()
    per_pixel = (shifted - plain).reshape(40, 3, -1)  # the same crops and flips, plus one shift per image
    np.testing.assert_allclose(per_pixel, per_pixel[:, :, :1].repeat(per_pixel.shape[2], 2), atol=1e-3)
    shifts = per_pixel[:, :, 0] / 0.5 / 255.0  # in [0, 1] colour units: sum_i alpha_i lambda_i v_i
    alphas = shifts @ expected_vectors.T / expected_values  # in numpy's basis: each ~ N(0, 0.5)
    assert np.all((0.3 < alphas.std(0)) & (alphas.std(0) < 0.75)) and np.all(np.abs(alphas.mean(0)) < 0.25)
    test_phase = data_net("data/train_lmdb", f"{transform} {pca}")()["data"].numpy()
    np.testing.assert_array_equal(test_phase, data_net("data/train_lmdb", transform)()["data"].numpy())


# ---- errors -------------------------------------------------------------------------

def test_missing_database_names_the_layer_and_path(golden_cwd):
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'data'.*data/nope.*no LMDB"):
        data_net("data/nope")


def test_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data.mdb").write_bytes(b"not an lmdb" * 100)
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'data'.*bad: cannot open as LMDB"):
        data_net(str(tmp_path / "bad"))


def test_a_record_that_is_not_a_datum(tmp_path):
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'data'.*junk: a record is not a valid Datum"):
        data_net(make_lmdb(tmp_path / "junk", [b"\xff\xff\xff"]))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_record_later_on_fails_the_forward_that_reaches_it(tmp_path, workers):
    good = array_to_datum(np.zeros((1, 4, 4), np.uint8)).SerializeToString()
    source = make_lmdb(tmp_path / "db", [good] * 5 + [b"\xff\xff"] + [good] * 2)
    net = data_net(source, batch=4, workers=workers)
    net()
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'data'.*db: a record is not a valid Datum"):
        net()


def test_mean_file_of_another_size(golden_cwd, tmp_path):
    write_mean(np.zeros((3, 16, 16), np.float32), tmp_path / "small.binaryproto")
    with pytest.raises(protocaffe.CaffeError,
                       match=r"layer 'data'.*mean file .*small.binaryproto has shape \(3, 16, 16\).*\(3, 32, 32\)"):
        data_net("data/train_lmdb", f'mean_file: "{tmp_path / "small.binaryproto"}"')
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'data'.*mean file: .*missing.binaryproto: no such file"):
        data_net("data/train_lmdb", 'mean_file: "missing.binaryproto"')


@pytest.mark.parametrize("transform, message", [
    ("crop_size: 33", "crop_size 33 exceeds the image size 32x32"),
    ('mean_value: 1 mean_value: 2', "specify 1 mean_value or 3"),
    ('mean_value: 1 mean_file: "data/mean.binaryproto"', "cannot specify mean_file and mean_value at the same time"),
    ("force_color: true force_gray: true", "cannot set both force_color and force_gray"),
])
def test_transform_settings_that_do_not_fit(golden_cwd, transform, message):
    with pytest.raises(protocaffe.CaffeError, match=f"layer 'data' \\(type Data\\): {message}"):
        data_net("data/train_lmdb", transform)


def test_leveldb_is_refused_with_the_alternative(golden_cwd):
    with pytest.raises(protocaffe.CaffeError, match=r"layer 'data'.*LEVELDB backend is not supported.*LMDB"):
        data_net("data/train_lmdb", extra="backend: LEVELDB")
