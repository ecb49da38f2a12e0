"""caffe.io against what pycaffe itself returned (golden pycaffe/io/io.npz)."""
import numpy as np
import pytest

from conftest import GOLDEN, assert_close
from protocaffe import io as caffe_io
from protocaffe.errors import CaffeError

IO = GOLDEN / "pycaffe" / "io"
REF = np.load(IO / "io.npz")


@pytest.mark.parametrize("name", ["colour.png", "colour.jpg", "grey.png"])
@pytest.mark.parametrize("color", [True, False])
def test_load_image(name, color):
    key = f"load_{name.replace('.', '_')}_{'color' if color else 'grey'}"
    img = caffe_io.load_image(str(IO / name), color=color)
    assert img.dtype == np.float32
    assert_close(img, REF[key], what=key)


@pytest.mark.parametrize("key, source, dims, order", [
    ("resize_down_227", "colour.png", (227, 227), 1),
    ("resize_up_300x400", "colour.png", (300, 400), 1),
    ("resize_nearest_100x90", "colour.png", (100, 90), 0),
    ("resize_cubic_120x130", "colour.png", (120, 130), 3),
    ("resize_grey_64", "grey.png", (64, 64), 1),
])
def test_resize_image(key, source, dims, order):
    img = caffe_io.load_image(str(IO / source), color=source != "grey.png")
    out = caffe_io.resize_image(img, dims, interp_order=order)
    assert out.dtype == np.float32
    assert_close(out, REF[key], what=key)


def test_resize_constant_image_stays_constant():
    out = caffe_io.resize_image(np.full((4, 5, 3), 0.25, np.float32), (7, 3))
    np.testing.assert_array_equal(out, np.full((7, 3, 3), 0.25, np.float32))


def test_resize_other_channel_counts_by_zoom():
    im = np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2)
    out = caffe_io.resize_image(im, (4, 4), interp_order=0)
    np.testing.assert_array_equal(out[:, :, 1], np.kron(im[:, :, 1], np.ones((2, 2))))


def test_oversample():
    out = caffe_io.oversample([REF["resize_down_227"][:200, :210]], (163, 171))
    assert_close(out, REF["oversample_10"], what="oversample_10")


def test_transformer_channel_mean_and_back():
    t = caffe_io.Transformer({"data": (1, 3, 227, 227)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104, 117, 123]))
    image = caffe_io.load_image(str(IO / "colour.png"))
    kept = image.copy()
    pre = t.preprocess("data", image)
    assert_close(pre, REF["pre_channel_mean"], what="pre_channel_mean")
    assert_close(t.deprocess("data", pre), REF["deprocess_channel_mean"], what="deprocess")
    np.testing.assert_array_equal(image, kept)


def test_transformer_full_mean_and_input_scale():
    t = caffe_io.Transformer({"data": (2, 3, 227, 227)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 255)
    t.set_mean("data", REF["input_scale_mean"])
    t.set_input_scale("data", 0.017)
    assert_close(t.preprocess("data", REF["resize_up_300x400"]), REF["pre_input_scale"])


def test_transformer_full_mean_is_resized_to_the_input():
    t = caffe_io.Transformer({"data": (1, 1, 4, 4)})
    t.set_mean("data", np.array([[0.0, 2.0], [4.0, 6.0]]))
    assert t.mean["data"].shape == (1, 4, 4)
    assert t.mean["data"].min() == pytest.approx(0.0, abs=1e-6)
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", np.full((4, 4, 1), 10.0, np.float32))
    np.testing.assert_allclose(out, 10.0 - t.mean["data"], rtol=1e-6)


@pytest.mark.parametrize("call", [
    lambda t: t.set_mean("data", np.zeros(4)),
    lambda t: t.set_channel_swap("data", (1, 0)),
    lambda t: t.set_transpose("data", (1, 0)),
    lambda t: t.preprocess("label", np.zeros((2, 2, 3))),
])
def test_transformer_errors(call):
    t = caffe_io.Transformer({"data": (1, 3, 8, 8)})
    with pytest.raises(CaffeError):
        call(t)


def test_blobproto_bytes_and_back():
    arr = REF["blob_array"]
    blob = caffe_io.array_to_blobproto(arr)
    assert blob.SerializeToString() == REF["blobproto_bytes"].tobytes()
    np.testing.assert_array_equal(caffe_io.blobproto_to_array(blob), arr)
    with_diff = caffe_io.array_to_blobproto(arr, diff=arr * 2)
    np.testing.assert_array_equal(caffe_io.blobproto_to_array(with_diff, return_diff=True), arr * 2)


def test_blobprotovector_bytes_and_back():
    arr = REF["blob_array"]
    data = caffe_io.arraylist_to_blobprotovector_str([arr, arr[:1, :2]])
    assert data == REF["blobprotovector_bytes"].tobytes()
    back = caffe_io.blobprotovector_str_to_arraylist(data)
    np.testing.assert_array_equal(back[0], arr)
    np.testing.assert_array_equal(back[1], arr[:1, :2])


def test_datum_bytes_and_back():
    u8 = caffe_io.array_to_datum(REF["datum_u8_array"], label=4)
    assert u8.SerializeToString() == REF["datum_uint8_bytes"].tobytes()
    fl = caffe_io.array_to_datum(REF["blob_array"][0], label=2)
    assert fl.SerializeToString() == REF["datum_float_bytes"].tobytes()
    np.testing.assert_array_equal(caffe_io.datum_to_array(u8), REF["datum_u8_array"])
    np.testing.assert_array_equal(caffe_io.datum_to_array(fl), REF["blob_array"][0])
    assert not caffe_io.array_to_datum(REF["datum_u8_array"]).HasField("label")
