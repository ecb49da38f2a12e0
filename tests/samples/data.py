from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent.parent / "data" / "golden" / "data"
NOGRAD = {"gradcheck": False, "dtype": torch.float32}

SAMPLES = {
    "Data": (f'name: "l" type: "Data" top: "t0" top: "t1" transform_param {{ crop_size: 16 mirror: true }} '
             f'data_param {{ source: "{DATA / "train_lmdb"}" batch_size: 3 backend: LMDB }}', [], NOGRAD),
    "ImageData": (f'name: "l" type: "ImageData" top: "t0" top: "t1" image_data_param {{ '
                  f'source: "{DATA / "list.txt"}" root_folder: "{DATA / "images"}/" batch_size: 2 '
                  f'new_height: 20 new_width: 24 shuffle: true }}', [], NOGRAD),
    "MemoryData": ('name: "l" type: "MemoryData" top: "t0" top: "t1" '
                   'memory_data_param { batch_size: 2 channels: 1 height: 3 width: 3 }', [],
                   dict(NOGRAD, prepare=lambda layer: layer.set_input_arrays(
                       np.ones((4, 1, 3, 3), np.float32), np.arange(4)))),
}
