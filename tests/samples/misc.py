"""Samples for SPP (layer_types/spp.py), Im2col (layer_types/im2col.py), Filter and BatchReindex (layer_types/indexing.py), the
HDF5 layers (data/hdf5.py) and WindowData (data/window.py). The HDF5 samples read the golden
hdf5_data files through a list of absolute paths written to a temporary folder (Caffe opens listed
paths from the working directory); WindowData reads an image and window file written there."""
import atexit
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from samples.layers import L, distinct

H5 = Path(__file__).resolve().parents[1] / "data" / "golden" / "layers2" / "hdf5_data"
TMP = Path(tempfile.mkdtemp(prefix="protocaffe_samples_"))
atexit.register(shutil.rmtree, TMP, True)
(TMP / "source.txt").write_text(f"{H5 / 'part0.h5'}\n{H5 / 'part1.h5'}\n")
cv2.imwrite(str(TMP / "img.png"), np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3))
(TMP / "windows.txt").write_text(f"# 0\n{TMP / 'img.png'}\n3 24 32\n3\n1 0.9 2 3 20 15\n2 0.7 0 0 31 23\n"
                                 "0 0.1 10 5 25 22\n")


def reindex(i, shape, g):
    """Bottom 1 of BatchReindex: indices into bottom 0's 3 items, with repeats."""
    return torch.tensor([2.0, 0.0, 2.0, 1.0, 2.0], dtype=torch.float64) if i else torch.randn(shape, generator=g,
                                                                                             dtype=torch.float64)


NOGRAD = {"gradcheck": False, "dtype": torch.float32}

SAMPLES = {
    "SPP": (L("SPP", "spp_param { pyramid_height: 3 pool: MAX }"), [(1, 2, 8, 6)], {"make_bottom": distinct}),
    "Im2col": (L("Im2col", "convolution_param { kernel_h: 2 kernel_w: 3 stride: 2 pad: 1 dilation: 2 }"),
               [(2, 3, 6, 7)]),
    "Filter": (L("Filter", bottoms=3, tops=2), [(4, 3), (4, 2, 2), (4,)], {"grad_inputs": [0, 1]}),
    "BatchReindex": (L("BatchReindex", bottoms=2), [(3, 2, 2), (5,)], {"make_bottom": reindex, "grad_inputs": [0]}),
    "HDF5Data": (f'name: "l" type: "HDF5Data" top: "data" top: "label" '
                 f'hdf5_data_param {{ source: "{TMP / "source.txt"}" batch_size: 4 shuffle: true }}', [], NOGRAD),
    "WindowData": (f'name: "l" type: "WindowData" top: "t0" top: "t1" transform_param {{ crop_size: 8 mirror: true '
                   f'mean_value: 100 }} window_data_param {{ source: "{TMP / "windows.txt"}" batch_size: 4 '
                   f'context_pad: 1 crop_mode: "square" }}', [], NOGRAD),
    "HDF5Output": (L("HDF5Output", f'hdf5_output_param {{ file_name: "{TMP / "out.h5"}" }}', bottoms=2, tops=0),
                   [(2, 3), (2, 1)], NOGRAD),
}
