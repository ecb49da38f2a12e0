"""The SSD fork's data tools: convert_annoset (byte for byte against the fork's own LMDB),
create_label_map, get_image_size, and the shapes detection set they turn into LMDBs."""
import shutil

import cv2
import numpy as np
import pytest

from conftest import GOLDEN
from protocaffe import TRAIN, schema
from protocaffe.cli import main
from protocaffe.data.db import open_lmdb
from protocaffe.datasets.shapes_detection import CLASSES, make_shapes_detection
from protocaffe.net import build_net
from protocaffe.proto.forks import ssd_pb2

RUNS = GOLDEN / "ssd" / "runs" / "annotated_data"
F = np.float32


def records(path):
    with open_lmdb(path).begin() as txn:  # the process's one environment of that folder
        return list(txn.cursor())


def boxes(value):
    anno = ssd_pb2.AnnotatedDatum.FromString(value)
    return [(g.group_label, a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax, a.bbox.difficult)
            for g in anno.annotation_group for a in g.annotation]


def test_convert_annoset_writes_the_forks_bytes(tmp_path, monkeypatch):
    """The golden lmdb was made by the fork's convert_annoset with these flags, in this folder:
    keys and values must be equal byte for byte (images re-encoded in their own format, since
    the fork compares the extension with its dot to the file's)."""
    monkeypatch.chdir(RUNS)
    out = tmp_path / "lmdb"
    assert main(["convert_annoset", "--anno_type=detection", "--label_type=xml",
                 "--label_map_file=labelmap.prototxt", "--check_label", "--encoded", "./", "list.txt", str(out)]) == 0
    assert records(out) == records(RUNS / "lmdb")


def test_convert_annoset_keeps_the_file_with_its_encode_type(tmp_path, monkeypatch):
    monkeypatch.chdir(RUNS)
    out = tmp_path / "lmdb"
    assert main(["convert_annoset", "--anno_type=detection", "--label_map_file=labelmap.prototxt",
                 "--encode_type=jpg", "./", "list.txt", str(out)]) == 0
    first = ssd_pb2.AnnotatedDatum.FromString(records(out)[0][1])
    assert first.datum.data == (RUNS / "images" / "img00.jpg").read_bytes()
    assert (first.datum.channels, first.datum.height, first.datum.width, first.datum.label) == (3, 48, 64, -1)
    assert [boxes(v) for _, v in records(out)] == [boxes(v) for _, v in records(RUNS / "lmdb")]


def test_json_and_text_annotations(tmp_path):
    """COCO-style JSON (category_id looked up by name, iscrowd as difficult, [x, y, w, h]) and
    text (label xmin ymin xmax ymax) boxes, normalized in float32 by the image size."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((50, 80, 3), np.uint8))
    (tmp_path / "a.json").write_text('{"image": {"height": 50, "width": 80}, "annotation": ['
                                     '{"category_id": 18, "iscrowd": 1, "bbox": [8, 5, 40.5, 20]},'
                                     '{"category_id": 3, "bbox": [0, 0, 80, 50]},'
                                     '{"category_id": 18, "bbox": [1.25, 2, 3, 4]}]}')
    (tmp_path / "a.txt").write_text("2 8 5 48.5 25\n2 0 0 80 50\n1 1 1 2 2\n")
    (tmp_path / "map.prototxt").write_text('item { name: "18" label: 1 } item { name: "3" label: 2 }')
    (tmp_path / "list.txt").write_text("a.png a.json\n")
    (tmp_path / "list_txt.txt").write_text("a.png a.txt\n")
    for label_type, listing, expected in (
            ("json", "list.txt", [(1, 0, 0.1, 0.1, 48.5 / 80, 0.5, True),
                                  (1, 1, 1.25 / 80, 0.04, 4.25 / 80, 0.12, False), (2, 0, 0, 0, 1, 1, False)]),
            ("txt", "list_txt.txt", [(2, 0, 0.1, 0.1, 48.5 / 80, 0.5, False), (2, 1, 0, 0, 1, 1, False),
                                     (1, 0, 1 / 80, 0.02, 2 / 80, 0.04, False)])):
        out = tmp_path / f"db_{label_type}"
        assert main(["convert_annoset", "--anno_type=detection", f"--label_type={label_type}",
                     f"--label_map_file={tmp_path}/map.prototxt", f"{tmp_path}/", str(tmp_path / listing),
                     str(out)]) == 0
        found = boxes(records(out)[0][1])
        assert [b[:2] + (b[6],) for b in found] == [e[:2] + (e[6],) for e in expected]
        np.testing.assert_array_equal([b[2:6] for b in found], F([e[2:6] for e in expected]))


def test_classification_lists_and_min_dim(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((30, 60, 3), 9, np.uint8))
    (tmp_path / "list.txt").write_text("a.png 4\n")
    out = tmp_path / "db"
    assert main(["convert_annoset", "--min_dim=45", f"{tmp_path}/", str(tmp_path / "list.txt"), str(out)]) == 0
    anno = ssd_pb2.AnnotatedDatum.FromString(records(out)[0][1])
    assert not anno.HasField("type") and anno.datum.label == 4 and not anno.datum.encoded
    assert (anno.datum.channels, anno.datum.height, anno.datum.width) == (3, 45, 90)


@pytest.mark.parametrize("xml, labelmap, flags, message", [
    ("<annotation><size><width>64</width><height>48</height></size><object><name>pink</name>"
     "<bndbox><xmin>1</xmin></bndbox></object></annotation>", None, [], "unknown name 'pink'"),
    ("<annotation><object>", None, [], "not valid XML"),
    (None, 'item { name: "red" label: 1 } item { name: "red" label: 2 }', ["--check_label"],
     "the name 'red' appears more than once"),
])
def test_convert_annoset_errors_are_one_line(tmp_path, capsys, xml, labelmap, flags, message):
    shutil.copytree(RUNS / "images", tmp_path / "images")
    shutil.copytree(RUNS / "annotations", tmp_path / "annotations")
    if xml:
        (tmp_path / "annotations" / "img00.xml").write_text(xml)
    (tmp_path / "map.prototxt").write_text(labelmap or (RUNS / "labelmap.prototxt").read_text())
    (tmp_path / "list.txt").write_text("images/img00.jpg annotations/img00.xml\n")
    code = main(["convert_annoset", "--anno_type=detection", f"--label_map_file={tmp_path}/map.prototxt", *flags,
                 f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and message in err[-1] and err[-1].startswith("protocaffe convert_annoset: error:")
    assert not (tmp_path / "db").exists()


def test_a_missing_image_is_skipped(tmp_path, capsys):
    (tmp_path / "list.txt").write_text("images/img00.jpg annotations/img00.xml\nimages/nope.jpg annotations/x.xml\n")
    out = tmp_path / "db"
    assert main(["convert_annoset", "--anno_type=detection", f"--label_map_file={RUNS}/labelmap.prototxt",
                 "--encoded", f"{RUNS}/", str(tmp_path / "list.txt"), str(out)]) == 0
    assert [k for k, _ in records(out)] == [b"00000000_images/img00.jpg"]
    assert "Could not open or find file" in capsys.readouterr().err


def test_create_label_map(tmp_path):
    (tmp_path / "names.txt").write_text("background 0\nred 1\ngreen 2\nblue 3\n")
    assert main(["create_label_map", str(tmp_path / "names.txt"), str(tmp_path / "map.prototxt")]) == 0
    assert (tmp_path / "map.prototxt").read_text() == (RUNS / "labelmap.prototxt").read_text()
    (tmp_path / "plain.txt").write_text("cat\ndog Dog\n")
    assert main(["create_label_map", str(tmp_path / "plain.txt"), str(tmp_path / "m2")]) == 1
    (tmp_path / "plain.txt").write_text("cat:7:Cat\ndog:9:Dog\n")
    assert main(["create_label_map", "--delimiter=:", str(tmp_path / "plain.txt"), str(tmp_path / "m3")]) == 0
    label_map = schema.parse_text((tmp_path / "m3").read_text(), ssd_pb2.LabelMap)
    assert [(i.name, i.label, i.display_name) for i in label_map.item] == [("cat", 7, "Cat"), ("dog", 9, "Dog")]
    (tmp_path / "plain.txt").write_text("cat\ndog\n")
    assert main(["create_label_map", "--include_background", str(tmp_path / "plain.txt"), str(tmp_path / "m4")]) == 0
    label_map = schema.parse_text((tmp_path / "m4").read_text(), ssd_pb2.LabelMap)
    assert [(i.name, i.label) for i in label_map.item] == [("none_of_the_above", 0), ("cat", 1), ("dog", 2)]


def test_get_image_size(tmp_path):
    assert main(["get_image_size", f"{RUNS}/", str(RUNS / "list.txt"), str(tmp_path / "sizes.txt")]) == 0
    assert (tmp_path / "sizes.txt").read_text().splitlines() == [f"img0{i} 48 64" for i in range(8)]
    (tmp_path / "ids.txt").write_text("".join(f"img0{i} {100 + i}\n" for i in range(8)))
    assert main(["get_image_size", "--name_id_file", str(tmp_path / "ids.txt"), f"{RUNS}/", str(RUNS / "list.txt"),
                 str(tmp_path / "ids_sizes.txt")]) == 0
    assert (tmp_path / "ids_sizes.txt").read_text().splitlines()[1] == "101 48 64"


def test_shapes_detection_set_feeds_annotated_data(tmp_path):
    """make_shapes --detection: deterministic, a shape inside each box (pixels far from the
    background colour), and convert_annoset + AnnotatedData read it."""
    out = tmp_path / "shapes"
    make_shapes_detection(str(out), train=12, val=4, size=64, seed=3)
    again = tmp_path / "again"
    make_shapes_detection(str(again), train=12, val=4, size=64, seed=3)
    assert (out / "images" / "train_00005.jpg").read_bytes() == (again / "images" / "train_00005.jpg").read_bytes()
    assert (out / "val_name_size.txt").read_text().splitlines()[0] == "val_00000 64 64"
    assert main(["convert_annoset", "--anno_type=detection", f"--label_map_file={out}/labelmap.prototxt",
                 "--encoded", "--encode_type=jpg", "--check_label", f"{out}/", str(out / "train.txt"),
                 str(out / "train_lmdb")]) == 0
    items = [ssd_pb2.AnnotatedDatum.FromString(v) for _, v in records(out / "train_lmdb")]
    assert len(items) == 12 and all(1 <= sum(len(g.annotation) for g in a.annotation_group) <= 3 for a in items)
    assert {g.group_label for a in items for g in a.annotation_group} <= set(range(1, len(CLASSES) + 1))
    (out / "net.prototxt").write_text(f'''layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
      transform_param {{ resize_param {{ height: 32 width: 32 }} }}
      data_param {{ source: "{out}/train_lmdb" batch_size: 4 backend: LMDB }} }}''')
    net = build_net(str(out / "net.prototxt"), TRAIN)
    net.layers["data"].workers = 0
    blobs = net()
    assert blobs["data"].shape == (4, 3, 32, 32) and blobs["label"].shape[-1] == 8
    img = cv2.imread(str(out / "images" / "train_00000.jpg")).astype(np.float32)
    background = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)
    for box in items[0].annotation_group[0].annotation:
        x0, y0 = round(box.bbox.xmin * 64), round(box.bbox.ymin * 64)
        x1, y1 = round(box.bbox.xmax * 64), round(box.bbox.ymax * 64)
        inside = np.abs(img[y0:y1, x0:x1] - background).max(axis=2)
        assert inside.max() > 60
