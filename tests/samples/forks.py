"""Samples for the forks' layer types (segmentation and mobile families). Their parameters are
extensions, written here in protobuf's bracketed text form (test_registry parses with plain
protobuf); prototxt files name them bare."""
from pathlib import Path

import torch

from samples.layers import L, distinct

DATA = Path(__file__).resolve().parents[1] / "data"

SEGNET_BN = ('[caffe.bn_param] { bn_mode: LEARN scale_filler { type: "gaussian" } '
             'shift_filler { type: "gaussian" } }')
CONV = 'convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" } ' \
       'bias_filler { type: "gaussian" } }'


def pooling_mask(i, shape, g):
    """Bottom 1 of Upsample: a 2x2/2 MAX pooling mask of a 4 x 6 plane (distinct indices)."""
    n, c, h, w = shape
    rows = torch.arange(h)[:, None] * 2 + torch.randint(0, 2, (n, c, h, w), generator=g)
    cols = torch.arange(w)[None, :] * 2 + torch.randint(0, 2, (n, c, h, w), generator=g)
    return (rows * (2 * w) + cols).double()


SAMPLES = {
    # segmentation
    "Upsample": (L("Upsample", "[caffe.upsample_param] { scale: 2 }", bottoms=2), [(2, 3, 2, 3)] * 2,
                 {"make_bottom": lambda i, s, g: pooling_mask(i, s, g) if i else torch.randn(s, generator=g,
                                                                                            dtype=torch.float64),
                  "grad_inputs": [0]}),
    "BN": (L("BN", SEGNET_BN, tops=3), [(4, 3, 2, 2)]),
    "DenseImageData": (f'name: "l" type: "DenseImageData" top: "t0" top: "t1" transform_param {{ scale: 0.01 }} '
                       f'[caffe.dense_image_data_param] {{ source: "{DATA / "forks" / "dense_pairs.txt"}" '
                       f'root_folder: "{DATA / "golden" / "data" / "images"}/" batch_size: 2 mirror: true '
                       f'crop_height: 30 crop_width: 36 shuffle: true }}', [], {"gradcheck": False,
                                                                               "dtype": torch.float32}),
    "Interp": (L("Interp", "[caffe.interp_param] { zoom_factor: 3 pad_beg: -1 }"), [(2, 3, 4, 5)]),
    # mobile
    "ShuffleChannel": (L("ShuffleChannel", "[caffe.shuffle_channel_param] { group: 3 }"), [(2, 6, 2, 2)]),
    "ConvolutionDepthwise": (L("ConvolutionDepthwise", CONV), [(2, 4, 5, 5)]),
    "DepthwiseConvolution": (L("DepthwiseConvolution", CONV.replace("stride: 2", "stride: 2 group: 4")),
                             [(2, 4, 5, 5)]),
    "ReLU6": (L("ReLU6", "[caffe.relu6_param] { negative_slope: 0.2 }"), [(2, 3, 4)],
              {"make_bottom": lambda i, s, g: (distinct(i, s, g) - 1.23) * 8}),
    "Axpy": (L("Axpy", bottoms=3), [(2, 3), (2, 3, 2, 2), (2, 3, 2, 2)]),
}
