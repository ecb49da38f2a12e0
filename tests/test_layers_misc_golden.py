"""SPP, Filter, BatchReindex, HDF5Data, HDF5Output and WindowData against BVLC Caffe's golden fixtures
(tests/data/golden/layers2) and hand-worked cases."""
import ctypes
import ctypes.util
import re
import shutil

import cv2
import h5py
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from conftest import DATA, GOLDEN, assert_close
from protocaffe import distributed, fileio
from protocaffe.data import hdf5
from protocaffe import net as netlib
from protocaffe.errors import CaffeError
from protocaffe.layer_types.spp import spp_level
from protocaffe.proto import caffe_pb2

L2 = GOLDEN / "layers2"


def golden_net(case, force_backward=False):
    folder = L2 / case
    param = netlib.read_net_param(folder / "net.prototxt")
    param.force_backward |= force_backward
    return netlib.build_net(param, weights=str(folder / "weights.caffemodel"), seed=1), \
        np.load(folder / "io.npz")


def net_from_text(text):
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    return netlib.CaffeNet(netlib.filter_net(param, netlib.net_state(param)), seed=1)


# ---- SPP ---------------------------------------------------------------------

@pytest.mark.parametrize("case", ["spp_max", "spp_ave"])
def test_spp_golden(case):
    net, io_ = golden_net(case)
    x = torch.from_numpy(io_["in_x"]).requires_grad_(True)
    out = net(x=x)["out"]
    assert net.blob_shapes["out"] == io_["out_out"].shape
    assert_close(out.detach(), io_["out_out"], what=f"{case} out")
    out.backward(torch.from_numpy(io_["tdiff_out"]))
    assert_close(x.grad, io_["gin_x"], what=f"{case} gin_x")


def test_spp_levels_by_hand():
    # 9 x 7 input, level 2 (4 bins): kernel ceil(9/4)=3, ceil(7/4)=2; pad (12-9+1)//2=2, (8-7+1)//2=1
    assert spp_level(2, 9, 7) == ((3, 2), (2, 1))
    assert spp_level(0, 9, 7) == ((9, 7), (0, 0))
    assert spp_level(1, 8, 8) == ((4, 4), (0, 0))


def spp_net(height, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return net_from_text(f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }} '
                         f'layer {{ name: "spp" type: "SPP" bottom: "x" top: "y" '
                         f'spp_param {{ pyramid_height: {height} pool: AVE }} }}')


def test_spp_height_one_keeps_the_pooling_shape_and_adapts_to_the_input_size():
    net = spp_net(1, (2, 3, 5, 4))
    assert net.blob_shapes["y"] == (2, 3, 1, 1)
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    assert_close(net(x=x)["y"], x.mean(dim=(2, 3), keepdim=True))  # a new size: levels rebuilt


def test_spp_input_too_small_for_the_pyramid_is_an_error():
    with pytest.raises(CaffeError, match="'spp'.*too small for pyramid_height 3"):
        spp_net(3, (1, 1, 2, 2))


# ---- Im2col --------------------------------------------------------------------

def test_im2col_by_hand():
    net = net_from_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 3 '
                        'dim: 3 } } } layer { name: "c" type: "Im2col" bottom: "x" top: "y" '
                        'convolution_param { kernel_size: 2 } }')
    cols = net(x=torch.arange(9.).reshape(1, 1, 3, 3))["y"]
    # channel (i, j) of the 2x2 kernel holds x[h + i, w + j]
    assert cols.tolist() == [[[[0, 1], [3, 4]], [[1, 2], [4, 5]], [[3, 4], [6, 7]], [[4, 5], [7, 8]]]]


def test_im2col_times_the_weights_is_convolution():
    conv = 'convolution_param { kernel_h: 2 kernel_w: 3 stride: 2 pad: 1 dilation: 2 %s }'
    net = net_from_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 7 '
                        'dim: 8 } } } layer { name: "c" type: "Im2col" bottom: "x" top: "cols" '
                        + conv % "" + ' } layer { name: "conv" type: "Convolution" bottom: "x" top: "y" '
                        + conv % 'num_output: 4 bias_term: false weight_filler { type: "gaussian" }' + ' }')
    blobs = net(x=torch.randn(2, 3, 7, 8, generator=torch.Generator().manual_seed(0)))
    assert net.blob_shapes["cols"] == (2, 18) + net.blob_shapes["y"][2:]
    weight = net.layer_by_name()["conv"].weight.reshape(4, -1)
    assert_close(torch.einsum("oc,nchw->nohw", weight, blobs["cols"]).detach(), blobs["y"].detach())


# ---- Filter and BatchReindex -------------------------------------------------

def scale_grad(diff, x):
    """The gradient of Scale pre_x's (C,) parameter, axis 1: sum of diff * x over the other axes."""
    axes = tuple(a for a in range(x.ndim) if a != 1)
    return (diff * x).sum(axis=axes)


def run_indexing_case(case):
    """Forward against Caffe; backward of the tested layer from tdiff_out through pre_x.

    Caffe's fixture holds zero diffs (no loss and force_backward off: its Net runs no
    backward, which test_layers_golden checks), so this runs with force_backward on and the
    reference is Caffe's Backward_cpu worked by hand."""
    net, io_ = golden_net(case, force_backward=True)
    inputs = {k[3:]: torch.from_numpy(io_[k]) for k in io_.files if k.startswith("in_")}
    first = {}
    blobs, _ = net.run(inputs, first)
    assert_close(blobs["out"].detach(), io_["out_out"], what=f"{case} out")
    first["x_s"].retain_grad()
    blobs["out"].backward(torch.from_numpy(io_["tdiff_out"]))
    pre = net.layer_by_name()["pre_x"].blobs[0]
    return io_, first["x_s"].grad.numpy(), pre.grad.numpy()


def test_filter_golden():
    io_, diff, gpre = run_indexing_case("filter")
    x, sel, tdiff = io_["in_x"], io_["in_sel"], io_["tdiff_out"]
    want = np.zeros_like(x)
    want[sel != 0] = tdiff
    assert_close(diff, want, what="filter diff_x_s")
    assert_close(gpre, scale_grad(want, x), what="filter gpre_x")


def test_batch_reindex_golden():
    io_, diff, gpre = run_indexing_case("batch_reindex")
    x, idx, tdiff = io_["in_x"], io_["in_idx"].astype(int), io_["tdiff_out"]
    want = np.zeros_like(x)
    np.add.at(want, idx, tdiff)  # item 2 is gathered twice, item 1 twice: gradients add
    assert want[2].any() and want[1].any()
    assert_close(diff, want, what="batch_reindex diff_x_s")
    assert_close(gpre, scale_grad(want, x), what="batch_reindex gpre_x")


FILTER_NET = ('layer { name: "x" type: "Input" top: "x" top: "y" top: "sel" input_param { '
              'shape { dim: 4 dim: 2 } shape { dim: 4 } shape { dim: 4 dim: 1 } } } '
              'layer { name: "f" type: "Filter" bottom: "x" bottom: "y" bottom: "sel" top: "fx" top: "fy" }')


def test_filter_output_size_follows_the_selector():
    net = net_from_text(FILTER_NET)
    assert net.blob_shapes["fx"] == (4, 2) and net.blob_shapes["fy"] == (4,)  # the upper bound
    x, y = torch.arange(8.).reshape(4, 2), torch.tensor([10., 11., 12., 13.])
    blobs = net(x=x, y=y, sel=torch.tensor([[0.], [2.], [0.], [-1.]]))
    assert blobs["fx"].tolist() == [[2., 3.], [6., 7.]] and blobs["fy"].tolist() == [11., 13.]
    assert net(x=x, y=y, sel=torch.zeros(4, 1))["fx"].shape == (0, 2)


def test_filter_checks_the_selector_shape():
    with pytest.raises(CaffeError, match="'f'.*bottom 'x'.*first axis must equal the selector's 5"):
        net_from_text(FILTER_NET.replace("dim: 4 dim: 1", "dim: 5 dim: 1"))
    with pytest.raises(CaffeError, match="'f'.*selector.*found \\(4, 2\\)"):
        net_from_text(FILTER_NET.replace("dim: 4 dim: 1", "dim: 4 dim: 2"))


def test_batch_reindex_index_out_of_range_is_an_error():
    net, io_ = golden_net("batch_reindex")
    with pytest.raises(CaffeError, match="'test'.*indices must lie in \\[0, 4\\), found \\[0.0, 4.0\\]"):
        net(x=torch.from_numpy(io_["in_x"]), idx=torch.tensor([0., 4., 1., 1., 1., 1.]))


# ---- HDF5Data and HDF5Output -------------------------------------------------

@pytest.fixture
def h5_case(tmp_path, monkeypatch):
    """A copy of the hdf5_data case as the working directory (its paths are relative to it)."""
    folder = tmp_path / "hdf5_data"
    shutil.copytree(L2 / "hdf5_data", folder)
    monkeypatch.chdir(folder)
    return folder


def test_hdf5_data_golden_batches_cross_files_and_wrap(h5_case):
    io_ = np.load("io.npz")
    net = netlib.build_net("net.prototxt", seed=1)
    assert net.blob_shapes == {"data": (3, 2, 3, 3), "label": (3, 1)}
    for k in range(4):  # batch 2 crosses into part1.h5, batch 3 wraps around to part0.h5
        blobs = net()
        np.testing.assert_array_equal(blobs["data"].numpy(), io_[f"batch{k}_data"])
        np.testing.assert_array_equal(blobs["label"].numpy(), io_[f"batch{k}_label"])


def test_hdf5_output_writes_what_caffe_wrote(h5_case):
    io_ = np.load("io.npz")
    net = netlib.build_net("net_output.prototxt", seed=1)
    net()
    with h5py.File("written.h5", "r") as f:
        assert sorted(f) == ["data", "label"] and f["label"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][()], io_["written_data"])
        np.testing.assert_array_equal(f["label"][()], io_["written_label"])  # Caffe's 4-d (3, 1, 1, 1)


def caffe_rows(log, top):
    """Caffe's values of ``top``, batch by batch, as `caffe test` logged them."""
    return [float(v) for v in re.findall(rf"Batch \d+, {top} = ([-\d.e+]+)", log.read_text())]


@pytest.mark.parametrize("name, batches", [("three", 12), ("one", 6)])
def test_hdf5_data_shuffle_gives_caffes_order(monkeypatch, name, batches):
    """Three files of 5, 3 and 7 rows (files and rows reshuffled at every wrap), and one file:
    row for row the order of a real `caffe test`, as it is in every Caffe run."""
    folder = DATA / "caffe_hdf5_shuffle"
    monkeypatch.chdir(folder)
    monkeypatch.setattr(hdf5, "SHUFFLE", hdf5.CRand())  # a fresh process's C library stream
    net = netlib.build_net(f"{name}.prototxt", caffe_pb2.TEST, seed=1)
    ours = [blobs["label"].tolist() for blobs in (net() for _ in range(batches))]
    labels = [v for batch in ours for v in batch]
    assert len(labels) == 4 * batches
    assert labels == caffe_rows(folder / f"caffe_test_{name}.log", "label")


def test_c_rand_is_the_c_librarys_rand():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "gnu_get_libc_version"):
        pytest.skip("the C library here is not glibc")
    libc.srand(1)
    ours = hdf5.CRand(1)
    assert [libc.rand() for _ in range(2000)] == [ours.rand() for _ in range(2000)]


def test_hdf5_data_shards_the_row_stream_across_solvers(h5_case, monkeypatch):
    """Solver r of n takes rows r, r + n, ... of the stream (Caffe's Skip), in TRAIN only."""
    net_text = open("net.prototxt").read().replace("batch_size: 3", "batch_size: 2")
    open("two.prototxt", "w").write(net_text)
    alone = netlib.build_net("two.prototxt", caffe_pb2.TRAIN, seed=1)
    stream = np.concatenate([alone()["label"].numpy() for _ in range(4)])
    for rank in range(2):
        monkeypatch.setitem(distributed._SOLVERS, "count", 2)
        monkeypatch.setitem(distributed._SOLVERS, "rank", rank)
        net = netlib.build_net("two.prototxt", caffe_pb2.TRAIN, seed=1)
        ours = np.concatenate([net()["label"].numpy() for _ in range(2)])
        np.testing.assert_array_equal(ours, stream[rank::2])
        test = netlib.build_net("two.prototxt", caffe_pb2.TEST, seed=1)
        np.testing.assert_array_equal(test()["label"].numpy(), stream[:2])


def h5_net(source, tops=("data", "label")):
    top = " ".join(f'top: "{t}"' for t in tops)
    return net_from_text(f'layer {{ name: "h5" type: "HDF5Data" {top} '
                         f'hdf5_data_param {{ source: "{source}" batch_size: 2 }} }}')


def write_list(name, *files):
    open(name, "w").write("\n".join(files) + "\n")
    return name


def test_hdf5_data_missing_dataset_names_file_and_dataset(h5_case):
    with pytest.raises(CaffeError, match="'h5'.*part0.h5: no dataset 'weight'.*holds data, label"):
        h5_net("source.txt", ("data", "weight"))


def test_hdf5_data_missing_files_are_errors(h5_case):
    with pytest.raises(CaffeError, match="'h5'.*cannot read the HDF5 source list nolist.txt"):
        h5_net("nolist.txt")
    with pytest.raises(CaffeError, match="'h5'.*cannot open HDF5 file nothere.h5 \\(relative to the working"):
        h5_net(write_list("bad.txt", "nothere.h5"))
    net = h5_net(write_list("late.txt", "part1.h5", "gone.h5"))  # found when the first file runs out
    net()
    with pytest.raises(CaffeError, match="'h5'.*gone.h5"):
        net()


def test_hdf5_data_mismatched_rows_and_shapes_are_errors(h5_case):
    with h5py.File("uneven.h5", "w") as f:
        f["data"], f["label"] = np.zeros((4, 2, 3, 3)), np.zeros((3, 1))
    with pytest.raises(CaffeError, match="uneven.h5: dataset 'label' has 3 rows, dataset 'data' has 4"):
        h5_net(write_list("uneven.txt", "uneven.h5"))
    with h5py.File("wide.h5", "w") as f:
        f["data"], f["label"] = np.zeros((2, 2, 4, 3)), np.zeros((2, 1))
    net = h5_net(write_list("wide.txt", "part1.h5", "wide.h5"))
    net()
    with pytest.raises(CaffeError, match="wide.h5: dataset 'data' has rows of shape \\(2, 4, 3\\), those of "
                                         "part1.h5 have \\(2, 3, 3\\)"):
        net()


# ---- WindowData (no Caffe fixture: hand-worked cases on generated images) ------------

def write_windows(folder, images):
    """A window file over constant-colour 20x20 images: images = [(bgr, [(class, overlap, x1, y1, x2, y2)])]."""
    lines = []
    for i, (bgr, windows) in enumerate(images):
        cv2.imwrite(str(folder / f"img{i}.png"), np.broadcast_to(np.array(bgr, np.uint8), (20, 20, 3)).copy())
        lines += [f"# {i}", f"img{i}.png", "3 20 20", str(len(windows))] + [" ".join(map(str, w)) for w in windows]
    (folder / "windows.txt").write_text("\n".join(lines) + "\n")


def window_net(folder, body, transform="", batch=8):
    return net_from_text(f'layer {{ name: "w" type: "WindowData" top: "data" top: "label" '
                         f'transform_param {{ crop_size: 10 {transform} }} window_data_param {{ source: '
                         f'"{folder / "windows.txt"}" root_folder: "{folder}/" batch_size: {batch} {body} }} }}')


COLOURS = [(10, 20, 30), (200, 100, 50)]


def test_window_data_samples_background_then_foreground(tmp_path):
    write_windows(tmp_path, [(COLOURS[0], [(3, 0.8, 0, 0, 5, 5), (1, 0.1, 10, 10, 19, 19)]),
                             (COLOURS[1], [(5, 0.6, 2, 2, 17, 17), (2, 0.3, 0, 0, 9, 9)])])  # 0.3: unused
    net = window_net(tmp_path, "bg_threshold: 0.2 fg_fraction: 0.5 scale: 0.5", "mean_value: 1 mean_value: 2 "
                     "mean_value: 3")
    assert net.blob_shapes == {"data": (8, 3, 10, 10), "label": (8,)}
    blobs = net()
    labels = blobs["label"].tolist()
    assert labels[:4] == [0] * 4 and set(labels[4:]) <= {3, 5}
    for item, label in zip(blobs["data"].numpy(), labels):
        colour = COLOURS[1] if label == 5 else COLOURS[0]  # the 0.3 window of image 1 is never drawn
        want = (np.array(colour, np.float32) - [1, 2, 3]) * 0.5
        np.testing.assert_array_equal(item, np.broadcast_to(want[:, None, None], (3, 10, 10)))


def test_window_data_context_pad_clips_at_the_border_and_mirrors_the_padding(tmp_path):
    # box 0..5 (centre 3, half 3), crop 10, context_pad 2: enlarged by 10/6 to -2..8, clipped to 0..8;
    # 9 of 11 pixels warp to round(9 * 10/11) = 8, the 2 outside to round(2 * 10/11) = 2 of padding
    write_windows(tmp_path, [(COLOURS[0], [(3, 0.8, 0, 0, 5, 5), (1, 0.1, 10, 10, 19, 19)])])
    net = window_net(tmp_path, "fg_fraction: 1 context_pad: 2", "mirror: true")
    plain, mirrored = np.zeros((3, 10, 10), np.float32), np.zeros((3, 10, 10), np.float32)
    plain[:, 2:, 2:] = np.array(COLOURS[0])[:, None, None]
    mirrored[:, 2:, :8] = np.array(COLOURS[0])[:, None, None]
    seen = []
    for item in net()["data"].numpy():
        seen.append(np.array_equal(item, mirrored))
        assert seen[-1] or np.array_equal(item, plain)
    assert any(seen) and not all(seen)


def test_window_data_square_mode_and_mean_file(tmp_path):
    write_windows(tmp_path, [(COLOURS[0], [(3, 0.8, 6, 2, 9, 9), (1, 0.1, 10, 10, 19, 19)])])
    ramp = np.tile((np.arange(20, dtype=np.uint8) * 10)[None, :, None], (20, 1, 3))
    cv2.imwrite(str(tmp_path / "img0.png"), ramp)
    mean = np.arange(3 * 14 * 14, dtype=np.float32).reshape(3, 14, 14) / 100
    fileio.write_mean(mean, tmp_path / "mean.binaryproto")
    net = window_net(tmp_path, 'fg_fraction: 1 crop_mode: "square"', f'mean_file: "{tmp_path / "mean.binaryproto"}"',
                     batch=1)
    # 4 x 8 box, centre (8, 6): squared to half 4 -> columns 4..12, rows 2..10, warped 9x9 -> 10x10;
    # the 14x14 mean is read at offset (14 - 10) // 2 = 2
    warped = cv2.resize(ramp[2:11, 4:13], (10, 10), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(net()["data"].numpy()[0], warped.astype(np.float32) - mean[:, 2:12, 2:12])


def test_window_data_errors(tmp_path):
    with pytest.raises(CaffeError, match="'w'.*cannot read the window file"):
        window_net(tmp_path, "")
    write_windows(tmp_path, [(COLOURS[0], [(0, 0.8, 0, 0, 5, 5), (1, 0.1, 10, 10, 19, 19)])])
    with pytest.raises(CaffeError, match="windows.txt: image 0 has a foreground window of class 0"):
        window_net(tmp_path, "")
    write_windows(tmp_path, [(COLOURS[0], [(2, 0.8, 0, 0, 5, 5)])])
    with pytest.raises(CaffeError, match="has 1 foreground and 0 background windows"):
        window_net(tmp_path, "")
    with pytest.raises(CaffeError, match="set transform_param.crop_size"):
        net_from_text(f'layer {{ name: "w" type: "WindowData" top: "d" top: "l" window_data_param {{ '
                      f'source: "{tmp_path / "windows.txt"}" batch_size: 2 crop_size: 10 }} }}')
    write_windows(tmp_path, [(COLOURS[0], [(2, 0.8, 0, 0, 5, 25), (1, 0.1, 10, 10, 19, 19)])])
    net = window_net(tmp_path, "fg_fraction: 1")
    with pytest.raises(CaffeError, match="window \\(0, 0, 5, 25\\) of image .*img0.png.*outside the image"):
        net()
    (tmp_path / "img0.png").unlink()
    with pytest.raises(CaffeError, match="cannot read image .*img0.png"):
        net()
    (tmp_path / "windows.txt").write_text("# 0\nimg0.png\n3 20 x\n")
    with pytest.raises(CaffeError, match="windows.txt:3: expected the image width, found 'x'"):
        window_net(tmp_path, "")
