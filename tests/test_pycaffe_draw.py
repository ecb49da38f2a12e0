"""caffe.draw and `protocaffe draw_net`: pycaffe's labels and colours, phases, a real PNG."""
import cv2
import pytest

from conftest import GOLDEN
from protocaffe import caffe_pb2, draw
from protocaffe.cli import main
from protocaffe.errors import CaffeError
from protocaffe.fileio import read_text

NET = GOLDEN / "solver" / "mini_caffenet.prototxt"


def dot_text(**kwargs):
    return draw.get_pydot_graph(read_text(NET, caffe_pb2.NetParameter), "LR", **kwargs).to_string()


def test_labels_colours_and_edges():
    text = dot_text(display_lrm=True)
    assert '"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 1\\npad: 0\\nlr mult: 1.0, 2.0"' in text
    assert '"pool1\\n(Pooling MAX)\\nkernel size: 3\\nstride: 2\\npad: 0"' in text
    assert 'fillcolor="#FF5050"' in text and 'fillcolor="#FF9900"' in text and 'fillcolor="#90EE90"' in text
    assert 'label="Batch 8"' in text and "label=8" in text
    vertical = draw.get_layer_label(read_text(NET, caffe_pb2.NetParameter).layer[2], "TB")
    assert vertical == '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 0"'


def test_phase_keeps_that_phases_layers():
    # the TRAIN and TEST data layers share one node; each adds its two edges
    assert dot_text().count('label="Batch 8"') == 4
    assert dot_text(phase=caffe_pb2.TEST).count('label="Batch 8"') == 2


def test_draw_net_command_writes_a_png(tmp_path):
    out = tmp_path / "net.png"
    assert main(["draw_net", str(NET), str(out), "--rankdir", "TB", "--phase", "TRAIN"]) == 0
    image = cv2.imread(str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[0] > 2 * image.shape[1]  # top to bottom: tall and narrow


def test_missing_dot_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CaffeError, match="install the system package graphviz"):
        draw.draw_net(read_text(NET, caffe_pb2.NetParameter), "LR")
