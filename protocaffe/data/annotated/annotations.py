"""Label maps and annotation files as the SSD fork reads them (src/caffe/util/io.cpp).

- A label map is a LabelMap in protobuf text (``item { name label display_name }``);
  :func:`label_file_to_map` builds one from lines of ``name [label] [display_name]``.
- :func:`read_annotations` adds an image's boxes to an AnnotatedDatum from a VOC XML file,
  a COCO-style JSON file, or a text file of ``label xmin ymin xmax ymax`` lines. Boxes are
  normalized by the image size (XML: the file's ``size``, JSON: its ``image`` size, falling
  back to the image's; text: the image's), in float32. One AnnotationGroup per label, in order of
  first appearance, instance ids counting from 0 within a group.

Values are parsed as the fork's Boost and iostream code parses them: an XML box corner that is
not an integer reads as 0 (a warning is logged), floats as ``strtof`` reads them.
"""
import ctypes
import ctypes.util
import json
import re
import xml.etree.ElementTree as ElementTree

import numpy as np

from protocaffe import schema
from protocaffe.errors import CaffeError
from protocaffe.log import LOGGER as log
from protocaffe.proto.forks import ssd_pb2

F = np.float32
_INT = re.compile(r"\s*([+-]?\d+)\s*")
_INT_PREFIX = re.compile(r"\s*([+-]?\d+)")
_FLOAT = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
_LIBC = None


def strtof(text):
    """The C library's strtof: ``text`` rounded once to float32 (through a double it could round twice)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
        _LIBC.strtof.restype, _LIBC.strtof.argtypes = ctypes.c_float, [ctypes.c_char_p, ctypes.c_void_p]
    return F(_LIBC.strtof(text.encode(), None))


def _int(text):
    """Boost's property-tree translation of text to int: the whole text, whitespace around it
    allowed; None where it fails."""
    match = _INT.fullmatch(text or "")
    value = int(match.group(1)) if match else None
    return value if value is not None and -2**31 <= value < 2**31 else None


# ---- label maps ---------------------------------------------------------------------------

def read_label_map(path):
    """A LabelMap from a protobuf text file; errors name the file."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise CaffeError(f"{path}: cannot read the label map: {e.strerror}") from None
    return schema.parse_text(text, ssd_pb2.LabelMap, path)


def name_to_label(label_map, strict, path="label map"):
    """{name: label}; with ``strict`` (--check_label) a name given twice is an error, else the last counts."""
    names = {}
    for item in label_map.item:
        if strict and item.name in names:
            raise CaffeError(f"{path}: the name '{item.name}' appears more than once (--check_label)")
        names[item.name] = item.label
    return names


def label_file_to_map(path, include_background, delimiter):
    """ReadLabelFileToLabelMap: a LabelMap from lines split at any character of ``delimiter``:
    ``name`` (labels count from 0, or 1 after the background), ``name label`` or ``name label
    display_name``; every line must have as many fields as the first. ``include_background``
    puts ``none_of_the_above`` (display name ``background``) first as label 0."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise CaffeError(f"{path}: cannot read the label file: {e.strerror}") from None
    if lines and lines[-1] == "":
        lines.pop()
    label_map = ssd_pb2.LabelMap()
    label = 0
    if include_background:
        label_map.item.add(name="none_of_the_above", label=0, display_name="background")
        label = 1
    split = re.compile("[" + re.escape(delimiter) + "]") if delimiter else None
    width = None
    for number, line in enumerate(lines, 1):
        fields = split.split(line) if split else [line]
        width = width or len(fields)
        if len(fields) != width:
            raise CaffeError(f"{path}:{number}: {len(fields)} fields, the first line has {width}")
        if width > 3:
            raise CaffeError(f"{path}:{number}: expected 1 to 3 fields (name [label] [display_name]), found {width}")
        if width > 1:
            match = _INT_PREFIX.match(fields[1])  # atoi
            label = int(match.group(1)) if match else 0
        label_map.item.add(name=fields[0], label=label, display_name=fields[2] if width == 3 else fields[0])
        if width == 1:
            label += 1
    return label_map


# ---- annotation files ---------------------------------------------------------------------

def _new_annotation(anno_datum, label):
    """A new Annotation in the group of ``label`` (made if missing), with the next instance id."""
    for group in anno_datum.annotation_group:
        if group.group_label == label:
            instance = group.annotation[-1].instance_id + 1 if len(group.annotation) else 0
            break
    else:
        group, instance = anno_datum.annotation_group.add(group_label=label), 0
    return group.annotation.add(instance_id=instance)


def _set_box(anno, coords, width, height, difficult, path):
    xmin, ymin, xmax, ymax = (F(v) for v in coords)
    if min(xmin, ymin, xmax, ymax) < 0 or xmin > width or xmax > width or ymin > height or ymax > height:
        log.warning("%s bounding box exceeds image boundary.", path)
    if xmin > xmax or ymin > ymax:
        log.warning("%s bounding box irregular.", path)
    anno.bbox.xmin, anno.bbox.ymin = F(xmin / F(width)), F(ymin / F(height))
    anno.bbox.xmax, anno.bbox.ymax = F(xmax / F(width)), F(ymax / F(height))
    anno.bbox.difficult = bool(difficult)


def _size(height, width, image_hw, path):
    if height is None or width is None:
        log.warning("When parsing %s: no valid image size in the file; using the image's", path)
        height, width = image_hw
    if (height, width) != tuple(image_hw):
        log.warning("%s inconsistent image size: %dx%d in the file, %dx%d read", path, height, width, *image_hw)
    if not (height and width):
        raise CaffeError(f"{path}: no valid image width/height")
    return height, width


def _child(element, tag):
    return next((c for c in element if c.tag == tag), None) if element is not None else None


def _label(names, name, path):
    if name not in names:
        raise CaffeError(f"{path}: unknown name '{name}' (not in the label map)")
    return names[name]


def read_xml(path, image_hw, names, anno_datum):
    """ReadXMLToAnnotatedDatum: a VOC annotation file's objects, their children read in order
    (``name`` starts an annotation, ``difficult`` is 1 or not, ``bndbox`` sets the box)."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as e:
        raise CaffeError(f"{path}: not valid XML: {e}") from None
    if root.tag != "annotation":
        raise CaffeError(f"{path}: expected an <annotation> element, found <{root.tag}>")
    size = _child(root, "size")
    height, width = (_int(getattr(_child(size, k), "text", None)) for k in ("height", "width"))
    height, width = _size(height, width, image_hw, path)
    for obj in (c for c in root if c.tag == "object"):
        anno, difficult = None, False
        for part in obj:
            if part.tag == "name":
                anno = _new_annotation(anno_datum, _label(names, part.text or "", path))
            elif part.tag == "difficult":
                difficult = part.text == "1"
            elif part.tag == "bndbox":
                if anno is None:
                    raise CaffeError(f"{path}: an object's <bndbox> comes before its <name>")
                corners = []
                for key in ("xmin", "ymin", "xmax", "ymax"):
                    node = _child(part, key)
                    value = _int(node.text) if node is not None else 0
                    if value is None:
                        log.warning("%s: <%s>%s</%s> is not an integer; read as 0, as the fork does",
                                    path, key, node.text, key)
                    corners.append(value or 0)
                _set_box(anno, corners, width, height, difficult, path)


def _texts(value):
    """A JSON value with its scalars as the text Boost's property tree keeps."""
    if isinstance(value, dict):
        return {k: _texts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_texts(v) for v in value]
    return {True: "true", False: "false", None: "null"}.get(value, value) if not isinstance(value, str) else value


def read_json(path, image_hw, names, anno_datum):
    """ReadJSONToAnnotatedDatum: ``image.height``/``image.width`` and an ``annotation`` list of
    {category_id (looked up by name), iscrowd (difficult), bbox [x, y, w, h]}."""
    try:
        with open(path) as f:
            doc = _texts(json.load(f, parse_float=str, parse_int=str, parse_constant=str))
    except (OSError, ValueError) as e:
        raise CaffeError(f"{path}: not valid JSON: {e}") from None
    image = doc.get("image") if isinstance(doc, dict) else None
    image = image if isinstance(image, dict) else {}
    height, width = _size(_int(image.get("height")), _int(image.get("width")), image_hw, path)
    annotations = doc.get("annotation") if isinstance(doc, dict) else None
    if not isinstance(annotations, (list, dict)):
        raise CaffeError(f"{path}: expected an 'annotation' list")
    for obj in (annotations.values() if isinstance(annotations, dict) else annotations):
        if not isinstance(obj, dict) or not isinstance(obj.get("category_id"), str):
            raise CaffeError(f"{path}: an annotation without a category_id")
        anno = _new_annotation(anno_datum, _label(names, obj["category_id"], path))
        crowd = _int(obj.get("iscrowd", "0")) or 0
        box = obj.get("bbox")
        items = list(box.values()) if isinstance(box, dict) else box
        if not isinstance(items, list) or len(items) != 4 or not all(
                isinstance(v, str) and _FLOAT.fullmatch(v.strip()) for v in items):
            raise CaffeError(f"{path}: a bbox must be four numbers [x, y, width, height], found {box}")
        x, y, w, h = (strtof(v.strip()) for v in items)
        _set_box(anno, (x, y, F(x + w), F(y + h)), width, height, crowd, path)


def read_txt(path, image_hw, anno_datum):
    """ReadTxtToAnnotatedDatum: ``label xmin ymin xmax ymax`` records (whitespace-separated, read
    until one fails to parse), normalized by the image's size; none is difficult."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        log.info("Cannot open %s", path)
        return False
    height, width = image_hw
    at = 0
    while True:
        values = []
        for kind in (_INT_PREFIX, _FLOAT, _FLOAT, _FLOAT, _FLOAT):
            match = kind.match(text, at)
            if not match:
                return True
            values.append(match.group(1))
            at = match.end()
        anno = _new_annotation(anno_datum, int(values[0]))
        _set_box(anno, [strtof(v) for v in values[1:]], width, height, False, path)


def read_annotations(label_type, path, image_hw, names, anno_datum):
    """Add the boxes of annotation file ``path`` (``label_type`` xml, json or txt) to ``anno_datum``."""
    if label_type == "xml":
        read_xml(path, image_hw, names, anno_datum)
    elif label_type == "json":
        read_json(path, image_hw, names, anno_datum)
    elif label_type == "txt":
        return read_txt(path, image_hw, anno_datum)
    else:
        raise CaffeError(f"--label_type {label_type}: expected xml, json or txt")
    return True
