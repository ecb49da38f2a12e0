"""Samples for SPP (layer_types/spp.py), Filter and BatchReindex (layer_types/indexing.py) and the
HDF5 layers (data/hdf5.py). The HDF5 samples read the golden hdf5_data files through a list of
absolute paths written to a temporary folder (Caffe opens listed paths from the working directory)."""
import atexit
import shutil
import tempfile
from pathlib import Path

import torch

from samples.layers import L, distinct

H5 = Path(__file__).resolve().parents[1] / "data" / "golden" / "layers2" / "hdf5_data"
TMP = Path(tempfile.mkdtemp(prefix="protocaffe_samples_"))
atexit.register(shutil.rmtree, TMP, True)
(TMP / "source.txt").write_text(f"{H5 / 'part0.h5'}\n{H5 / 'part1.h5'}\n")


def reindex(i, shape, g):
    """Bottom 1 of BatchReindex: indices into bottom 0's 3 items, with repeats."""
    return torch.tensor([2.0, 0.0, 2.0, 1.0, 2.0], dtype=torch.float64) if i else torch.randn(shape, generator=g,
                                                                                             dtype=torch.float64)


NOGRAD = {"gradcheck": False, "dtype": torch.float32}

SAMPLES = {
    "SPP": (L("SPP", "spp_param { pyramid_height: 3 pool: MAX }"), [(2, 3, 8, 6)], {"make_bottom": distinct}),
    "Filter": (L("Filter", bottoms=3, tops=2), [(4, 3), (4, 2, 2), (4,)], {"grad_inputs": [0, 1]}),
    "BatchReindex": (L("BatchReindex", bottoms=2), [(3, 2, 2), (5,)], {"make_bottom": reindex, "grad_inputs": [0]}),
    "HDF5Data": (f'name: "l" type: "HDF5Data" top: "data" top: "label" '
                 f'hdf5_data_param {{ source: "{TMP / "source.txt"}" batch_size: 4 shuffle: true }}', [], NOGRAD),
    "HDF5Output": (L("HDF5Output", f'hdf5_output_param {{ file_name: "{TMP / "out.h5"}" }}', bottoms=2, tops=0),
                   [(2, 3), (2, 1)], NOGRAD),
}
