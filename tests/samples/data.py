"""Samples for the data layers in protocaffe/data (Data, ImageData, MemoryData, the SSD fork's
AnnotatedData), over the golden data."""
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "data" / "golden" / "data"
SSD = Path(__file__).resolve().parents[1] / "data" / "golden" / "ssd" / "runs" / "annotated_data"
NOGRAD = {"gradcheck": False, "dtype": torch.float32}

SAMPLES = {
    "Data": (f'name: "l" type: "Data" top: "t0" top: "t1" transform_param {{ crop_size: 28 mirror: true '
             f'mean_file: "{DATA / "mean.binaryproto"}" }} '
             f'data_param {{ source: "{DATA / "train_lmdb"}" batch_size: 4 backend: LMDB }}', [], NOGRAD),
    "ImageData": (f'name: "l" type: "ImageData" top: "t0" top: "t1" transform_param {{ mean_value: 100 }} '
                  f'image_data_param {{ source: "{DATA / "list.txt"}" root_folder: "{DATA / "images"}/" '
                  f'batch_size: 3 new_height: 20 new_width: 24 shuffle: true }}', [], NOGRAD),
    "AnnotatedData": (f'name: "l" type: "AnnotatedData" top: "t0" top: "t1" transform_param {{ mean_value: 104 '
                      f'[caffe.resize_param] {{ height: 32 width: 32 }} }} '
                      f'data_param {{ source: "{SSD / "lmdb"}" batch_size: 1 backend: LMDB }}', [], NOGRAD),
    "MemoryData": ('name: "l" type: "MemoryData" top: "t0" top: "t1" '
                   'memory_data_param { batch_size: 2 channels: 3 height: 4 width: 5 }', [],
                   dict(NOGRAD, prepare=lambda layer: layer.reset(np.ones((4, 3, 4, 5)), np.arange(4)))),
}
