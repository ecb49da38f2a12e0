"""Samples for the vision, common and normalization layers (neuron and loss: their own files)."""
import torch

from protocaffe.proto import caffe_pb2


def indices(n):
    return lambda i, shape, g: torch.randint(0, n, shape, generator=g).double()


def distinct(i, shape, g):
    """Values far apart, so max/argmax choices are stable under gradcheck's nudges."""
    n = int(torch.tensor(shape).prod()) if shape else 1
    return (torch.randperm(n, generator=g).double() * 0.1 + 0.05 * i).reshape(shape)


def L(type_, body="", bottoms=1, tops=1):
    b = " ".join(f'bottom: "b{i}"' for i in range(bottoms))
    t = " ".join(f'top: "t{i}"' for i in range(tops))
    return f'name: "l" type: "{type_}" {b} {t} {body}'


NOGRAD = {"gradcheck": False}
G = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 }'

SAMPLES = {
    # vision
    "Convolution": (L("Convolution", f"convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 {G} }}"),
                    [(2, 4, 5, 5)]),
    "Deconvolution": (L("Deconvolution", f"convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 group: 2 {G} }}"),
                      [(2, 2, 3, 3)]),
    "Pooling": (L("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"), [(2, 3, 6, 6)]),
    "LRN": (L("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"), [(2, 5, 3, 3)]),
    "InnerProduct": (L("InnerProduct", f"inner_product_param {{ num_output: 3 {G} }}"), [(2, 3, 2, 2)]),
    "Embed": (L("Embed", f"embed_param {{ num_output: 3 input_dim: 5 {G} }}"), [(4,)],
              {"make_bottom": indices(5), "gradcheck": False}),
    "Crop": (L("Crop", "crop_param { axis: 2 offset: 1 }", bottoms=2), [(2, 3, 5, 5), (2, 3, 3, 3)]),
    # common
    "Concat": (L("Concat", "concat_param { axis: 1 }", bottoms=2), [(2, 3, 2), (2, 1, 2)]),
    "Eltwise": (L("Eltwise", "eltwise_param { operation: MAX }", bottoms=3), [(2, 3)] * 3,
                {"make_bottom": distinct}),
    "Flatten": (L("Flatten", "flatten_param { axis: 1 end_axis: 2 }"), [(2, 3, 4, 5)]),
    "Reshape": (L("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }"), [(2, 3, 4)]),
    "Slice": (L("Slice", "slice_param { axis: 1 slice_point: 1 slice_point: 3 }", tops=3), [(2, 4, 2)]),
    "Split": (L("Split", tops=2), [(2, 3)]),
    "Silence": (L("Silence", tops=0), [(2, 3)], NOGRAD),
    "Tile": (L("Tile", "tile_param { axis: 1 tiles: 3 }"), [(2, 3)]),
    "Reduction": (L("Reduction", "reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 }"), [(2, 3, 4)]),
    "ArgMax": (L("ArgMax", "argmax_param { top_k: 2 out_max_val: true }"), [(2, 5, 1, 1)],
               {"make_bottom": distinct, "gradcheck": False}),
    # normalization
    "BatchNorm": (L("BatchNorm"), [(4, 3, 2, 2)], {"phase": caffe_pb2.TRAIN}),
    "MVN": (L("MVN", "mvn_param { across_channels: true }"), [(2, 3, 2, 2)]),
    "Scale": (L("Scale", 'scale_param { axis: 1 num_axes: 1 bias_term: true filler { type: "gaussian" } }'),
              [(2, 3, 2)]),
    "Bias": (L("Bias", "bias_param { axis: 1 }", bottoms=2), [(2, 3, 2), (3,)]),
}
