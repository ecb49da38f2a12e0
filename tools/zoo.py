"""Write the deploy nets of the Caffe model zoo's best-known models into models/zoo/.

    python tools/zoo.py            # writes models/zoo/<name>/deploy.prototxt

Each net is the published architecture, written here from its paper with
protocaffe.net_spec (no file copied): the layer names, shapes and the
BatchNorm + Scale pairs follow the Caffe releases of these models, so a
trained .caffemodel of the same net would load by layer name. Weights are not
part of the zoo here (none can be downloaded on this machine); tools/bench_infer.py
fills them at random. CaffeNet's deploy net is models/bvlc_reference_caffenet.

- GoogLeNet (Szegedy et al. 2014, Table 1): nine inception modules, LRN after
  conv1 and conv2, 7x7 average pooling, dropout 0.4.
- ResNet-50 (He et al. 2015, Table 1; the authors' Caffe release): bottleneck
  blocks 3-4-6-3, the stride in the first 1x1 convolution of a stage, convolutions
  without bias, each followed by BatchNorm (global statistics) and Scale.
- MobileNet v1 (Howard et al. 2017, Table 1): depthwise 3x3 (group = channels)
  and pointwise 1x1 convolutions, each with BatchNorm + Scale + ReLU; the
  classifier a 1x1 convolution.
- MobileNet v2 (Sandler et al. 2018, Table 2): inverted residual blocks
  (1x1 expansion by t, depthwise 3x3, linear 1x1 projection; a sum where stride
  is 1 and the widths match), ReLU in place of ReLU6, which Caffe lacks.
- SqueezeNet 1.0 and 1.1 (Iandola et al. 2016, Table 1; 1.1 from the authors'
  release notes): fire modules (squeeze 1x1, expand 1x1 and 3x3 concatenated),
  conv10 to 1000 classes and global average pooling.
- VGG-16 (Simonyan and Zisserman 2014, configuration D).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocaffe.net_spec import NetSpec, layers as L, params as P  # noqa: E402

ZOO = ROOT / "models" / "zoo"
MAX, AVE = P.Pooling.MAX, P.Pooling.AVE


def _input(n, size):
    n.data = L.Input(shape=dict(dim=[1, 3, size, size]))
    return n.data


def _conv(n, name, bottom, out, k, stride=1, pad=0, group=1, bias=True):
    n[name] = L.Convolution(bottom, num_output=out, kernel_size=k, stride=stride, pad=pad, group=group,
                            bias_term=bias)
    return n[name]


def _relu(n, name, bottom):
    n[name] = L.ReLU(bottom, in_place=True)
    return n[name]


def _bn_scale(n, bn, scale, bottom):
    """Caffe's batch normalization: BatchNorm (statistics only) then Scale (the affine part), in place."""
    n[bn] = L.BatchNorm(bottom, in_place=True)
    n[scale] = L.Scale(n[bn], bias_term=True, in_place=True)
    return n[scale]


def _classifier(n, bottom, prob="prob"):
    n[prob] = L.Softmax(bottom)


def googlenet():
    n = NetSpec()
    x = _input(n, 224)
    x = _relu(n, "conv1/relu_7x7", _conv(n, "conv1/7x7_s2", x, 64, 7, 2, 3))
    n["pool1/3x3_s2"] = L.Pooling(x, pool=MAX, kernel_size=3, stride=2)
    n["pool1/norm1"] = L.LRN(n["pool1/3x3_s2"], local_size=5, alpha=0.0001, beta=0.75)
    x = _relu(n, "conv2/relu_3x3_reduce", _conv(n, "conv2/3x3_reduce", n["pool1/norm1"], 64, 1))
    x = _relu(n, "conv2/relu_3x3", _conv(n, "conv2/3x3", x, 192, 3, pad=1))
    n["conv2/norm2"] = L.LRN(x, local_size=5, alpha=0.0001, beta=0.75)
    n["pool2/3x3_s2"] = L.Pooling(n["conv2/norm2"], pool=MAX, kernel_size=3, stride=2)
    x = n["pool2/3x3_s2"]
    widths = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
              "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
              "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
              "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
              "5b": (384, 192, 384, 48, 128, 128)}
    for stage, w in widths.items():
        x = _inception(n, f"inception_{stage}", x, *w)
        if stage in ("3b", "4e"):
            pool = f"pool{stage[0]}/3x3_s2"
            n[pool] = L.Pooling(x, pool=MAX, kernel_size=3, stride=2)
            x = n[pool]
    n["pool5/7x7_s1"] = L.Pooling(x, pool=AVE, kernel_size=7, stride=1)
    n["pool5/drop_7x7_s1"] = L.Dropout(n["pool5/7x7_s1"], dropout_ratio=0.4, in_place=True)
    n["loss3/classifier"] = L.InnerProduct(n["pool5/drop_7x7_s1"], num_output=1000)
    _classifier(n, n["loss3/classifier"])
    return n


def _inception(n, name, x, c1, c3r, c3, c5r, c5, cp):
    a = _relu(n, f"{name}/relu_1x1", _conv(n, f"{name}/1x1", x, c1, 1))
    b = _relu(n, f"{name}/relu_3x3_reduce", _conv(n, f"{name}/3x3_reduce", x, c3r, 1))
    b = _relu(n, f"{name}/relu_3x3", _conv(n, f"{name}/3x3", b, c3, 3, pad=1))
    c = _relu(n, f"{name}/relu_5x5_reduce", _conv(n, f"{name}/5x5_reduce", x, c5r, 1))
    c = _relu(n, f"{name}/relu_5x5", _conv(n, f"{name}/5x5", c, c5, 5, pad=2))
    n[f"{name}/pool"] = L.Pooling(x, pool=MAX, kernel_size=3, stride=1, pad=1)
    d = _relu(n, f"{name}/relu_pool_proj", _conv(n, f"{name}/pool_proj", n[f"{name}/pool"], cp, 1))
    n[f"{name}/output"] = L.Concat(a, b, c, d)
    return n[f"{name}/output"]


def resnet50():
    n = NetSpec()
    x = _input(n, 224)
    x = _conv(n, "conv1", x, 64, 7, 2, 3, bias=True)
    x = _relu(n, "conv1_relu", _bn_scale(n, "bn_conv1", "scale_conv1", x))
    n.pool1 = L.Pooling(x, pool=MAX, kernel_size=3, stride=2)
    x = n.pool1
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=2):
        for b in range(blocks):
            stride = 2 if b == 0 and stage > 2 else 1
            x = _bottleneck(n, f"{stage}{chr(ord('a') + b)}", x, width, stride, project=b == 0)
    n.pool5 = L.Pooling(x, pool=AVE, kernel_size=7, stride=1)
    n.fc1000 = L.InnerProduct(n.pool5, num_output=1000)
    _classifier(n, n.fc1000)
    return n


def _bottleneck(n, name, x, width, stride, project):
    """res<name>: 1x1 (stride) -> 3x3 -> 1x1 (4 width), each with BN + Scale; plus the shortcut."""
    shortcut = x
    if project:
        s = _conv(n, f"res{name}_branch1", x, 4 * width, 1, stride, bias=False)
        shortcut = _bn_scale(n, f"bn{name}_branch1", f"scale{name}_branch1", s)
    y = x
    for part, (out, k, st, pad) in zip("abc", [(width, 1, stride, 0), (width, 3, 1, 1), (4 * width, 1, 1, 0)]):
        branch = f"{name}_branch2{part}"
        y = _conv(n, f"res{branch}", y, out, k, st, pad, bias=False)
        y = _bn_scale(n, f"bn{branch}", f"scale{branch}", y)
        if part != "c":
            y = _relu(n, f"res{branch}_relu", y)
    n[f"res{name}"] = L.Eltwise(shortcut, y)
    return _relu(n, f"res{name}_relu", n[f"res{name}"])


def _conv_bn_relu(n, name, x, out, k, stride=1, pad=0, group=1, relu=True):
    """MobileNet's unit: convolution without bias, BatchNorm + Scale (``name/bn``, ``name/scale``), ReLU."""
    x = _conv(n, name, x, out, k, stride, pad, group, bias=False)
    x = _bn_scale(n, f"{name}/bn", f"{name}/scale", x)
    return _relu(n, f"relu{name[4:]}", x) if relu else x


def mobilenet_v1():
    n = NetSpec()
    x = _conv_bn_relu(n, "conv1", _input(n, 224), 32, 3, 2, 1)
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    channels = 32
    names = ["2_1", "2_2", "3_1", "3_2", "4_1", "4_2", "5_1", "5_2", "5_3", "5_4", "5_5", "5_6", "6"]
    for unit, (out, stride) in zip(names, plan):
        x = _conv_bn_relu(n, f"conv{unit}/dw", x, channels, 3, stride, 1, group=channels)
        x = _conv_bn_relu(n, f"conv{unit}/sep", x, out, 1)
        channels = out
    n.pool6 = L.Pooling(x, pool=AVE, global_pooling=True)
    n.fc7 = L.Convolution(n.pool6, num_output=1000, kernel_size=1)
    _classifier(n, n.fc7)
    return n


def mobilenet_v2():
    n = NetSpec()
    x = _conv_bn_relu(n, "conv1", _input(n, 224), 32, 3, 2, 1)
    channels, block = 32, 2
    for t, out, repeat, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                   (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(repeat):
            name = f"conv{block}_{i + 1}"
            s = stride if i == 0 else 1
            y = x if t == 1 else _conv_bn_relu(n, f"{name}/expand", x, channels * t, 1)
            y = _conv_bn_relu(n, f"{name}/dwise", y, channels * t, 3, s, 1, group=channels * t)
            y = _conv_bn_relu(n, f"{name}/linear", y, out, 1, relu=False)
            if s == 1 and channels == out:
                n[f"block_{block}_{i + 1}"] = L.Eltwise(x, y)
                y = n[f"block_{block}_{i + 1}"]
            x, channels = y, out
        block += 1
    x = _conv_bn_relu(n, "conv9", x, 1280, 1)
    n.pool9 = L.Pooling(x, pool=AVE, global_pooling=True)
    n.fc10 = L.Convolution(n.pool9, num_output=1000, kernel_size=1)
    _classifier(n, n.fc10)
    return n


def _fire(n, name, x, squeeze, expand):
    s = _relu(n, f"{name}/relu_squeeze1x1", _conv(n, f"{name}/squeeze1x1", x, squeeze, 1))
    a = _relu(n, f"{name}/relu_expand1x1", _conv(n, f"{name}/expand1x1", s, expand, 1))
    b = _relu(n, f"{name}/relu_expand3x3", _conv(n, f"{name}/expand3x3", s, expand, 3, pad=1))
    n[f"{name}/concat"] = L.Concat(a, b)
    return n[f"{name}/concat"]


def squeezenet(version):
    """1.0: conv1 7x7/2 96, pools after conv1, fire4, fire8; 1.1: conv1 3x3/2 64, pools after
    conv1, fire3, fire5 (2.4x less computation, the same accuracy)."""
    n = NetSpec()
    x = _input(n, 227)
    if version == "1.0":
        x = _relu(n, "relu_conv1", _conv(n, "conv1", x, 96, 7, 2))
        pools_after = {"fire4", "fire8"}
    else:
        x = _relu(n, "relu_conv1", _conv(n, "conv1", x, 64, 3, 2))
        pools_after = {"fire3", "fire5"}
    n.pool1 = L.Pooling(x, pool=MAX, kernel_size=3, stride=2)
    x = n.pool1
    for i, (squeeze, expand) in enumerate([(16, 64), (16, 64), (32, 128), (32, 128),
                                           (48, 192), (48, 192), (64, 256), (64, 256)], start=2):
        x = _fire(n, f"fire{i}", x, squeeze, expand)
        if f"fire{i}" in pools_after:
            n[f"pool{i}"] = L.Pooling(x, pool=MAX, kernel_size=3, stride=2)
            x = n[f"pool{i}"]
    n.drop9 = L.Dropout(x, dropout_ratio=0.5, in_place=True)
    x = _relu(n, "relu_conv10", _conv(n, "conv10", n.drop9, 1000, 1))
    n.pool10 = L.Pooling(x, pool=AVE, global_pooling=True)
    _classifier(n, n.pool10)
    return n


def vgg16():
    n = NetSpec()
    x = _input(n, 224)
    for block, (convs, width) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for i in range(1, convs + 1):
            x = _relu(n, f"relu{block}_{i}", _conv(n, f"conv{block}_{i}", x, width, 3, pad=1))
        n[f"pool{block}"] = L.Pooling(x, pool=MAX, kernel_size=2, stride=2)
        x = n[f"pool{block}"]
    for fc, width in (("fc6", 4096), ("fc7", 4096)):
        n[fc] = L.InnerProduct(x, num_output=width)
        x = _relu(n, f"relu{fc[2:]}", n[fc])
        n[f"drop{fc[2:]}"] = L.Dropout(x, dropout_ratio=0.5, in_place=True)
        x = n[f"drop{fc[2:]}"]
    n.fc8 = L.InnerProduct(x, num_output=1000)
    _classifier(n, n.fc8)
    return n


NETS = {"googlenet": ("GoogLeNet", googlenet), "resnet50": ("ResNet-50", resnet50),
        "mobilenet_v1": ("MobileNet", mobilenet_v1), "mobilenet_v2": ("MobileNetV2", mobilenet_v2),
        "squeezenet_v1.0": ("SqueezeNet_v1.0", lambda: squeezenet("1.0")),
        "squeezenet_v1.1": ("SqueezeNet_v1.1", lambda: squeezenet("1.1")), "vgg16": ("VGG_ILSVRC_16_layers", vgg16)}
"""folder name -> (the net's ``name:``, the function that writes it)."""


def deploy_text(folder):
    """The deploy prototxt of zoo net ``folder``, as text."""
    title, make = NETS[folder]
    param = make().to_proto()
    param.name = title
    return str(param)


if __name__ == "__main__":
    for folder in NETS:
        path = ZOO / folder / "deploy.prototxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(deploy_text(folder))
        print(f"wrote {path.relative_to(ROOT)}")
