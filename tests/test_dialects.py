"""Forks' files: their fields read by bare name at the fork's numbers, the dialect named in the
log, colliding numbers moved on reading a fork's binary file, BVLC files unchanged."""
import pytest

from conftest import GOLDEN
from protocaffe import dialects, fileio, schema
from protocaffe.errors import CaffeError
from protocaffe.net import read_net_param
from protocaffe.proto import caffe_pb2
from protocaffe.proto.forks import ssd_pb2
from protocaffe.solver.solver import read_solver_param

SSD_RUN = GOLDEN / "ssd" / "runs" / "ssd_train"


def test_ssd_fields_read_by_bare_name_and_written_back_as_the_fork_writes_them(tmp_path):
    param = fileio.read_text(SSD_RUN / "train.prototxt", caffe_pb2.NetParameter)
    prior = next(l for l in param.layer if l.type == "PriorBox")
    assert schema.has(prior, "prior_box_param")
    assert list(schema.get(prior, "prior_box_param").min_size) == [6.0]
    fileio.write_text(param, tmp_path / "out.prototxt")
    text = (tmp_path / "out.prototxt").read_text()
    assert "  prior_box_param {" in text and "[caffe." not in text
    assert fileio.read_text(tmp_path / "out.prototxt", caffe_pb2.NetParameter) == param


def test_fork_fields_keep_the_forks_numbers_on_the_wire():
    layer = caffe_pb2.LayerParameter()
    schema.get(layer, "permute_param").order.extend([0, 2, 3, 1])
    data = layer.SerializeToString()
    assert data[:2] == bytes([0xD2, 0x0C])  # field 202, wire type 2: varint of 202 << 3 | 2
    assert list(ssd_pb2.PermuteParameter.FromString(data[3:]).order) == [0, 2, 3, 1]
    again = caffe_pb2.LayerParameter.FromString(data)
    assert list(schema.get(again, "permute_param").order) == [0, 2, 3, 1]


def test_an_unknown_field_still_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('layer {\n  name: "p"\n  type: "PriorBox"\n  prior_boxx_param { min_size: 4 }\n}\n')
    with pytest.raises(CaffeError, match=r'bad.prototxt:4:3: .*no field named "prior_boxx_param"'):
        read_net_param(path)


def test_deep_nesting_is_one_line(tmp_path):
    """Caffe's schema has no recursive message: depth ends at the first unknown name."""
    path = tmp_path / "deep.prototxt"
    path.write_text("layer { " * 5000 + "}" * 5000)
    with pytest.raises(CaffeError, match=r"deep.prototxt:1:\d+: .*no field named \"layer\""):
        fileio.read_text(path, caffe_pb2.NetParameter)


def test_dialect_named_in_the_log_for_ssd_files_only(logged):
    read_net_param(SSD_RUN / "train.prototxt")
    read_solver_param(SSD_RUN / "solver.prototxt")
    read_net_param(GOLDEN / "nets" / "slim_caffenet_deploy.prototxt")
    lines = sorted({r.getMessage() for r in logged.records if r.getMessage().startswith("Reading ")})
    assert len(lines) == 2, lines
    lines.sort(key=lambda line: "solver" in line)
    assert lines[0].startswith(f"Reading {SSD_RUN / 'train.prototxt'} as SSD (weiliu89/caffe) (")
    assert "prior_box_param" in lines[0] and "multibox_loss_param" in lines[0]
    assert "eval_type" in lines[1]


def _ssd_solver_bytes():
    """A solver as the SSD fork writes it: eval_type (its 41) and ap_version (its 42) as strings."""
    def string_field(number, text):
        key = number << 3 | 2
        return bytes([key & 0x7F | 0x80, key >> 7, len(text)]) + text.encode()
    head = caffe_pb2.SolverParameter(base_lr=0.001, max_iter=7).SerializeToString()
    return head + string_field(41, "detection") + string_field(42, "11point")


def test_ssd_binary_solver_renumbered_with_the_dialect(tmp_path):
    path = tmp_path / "solver.bin"
    path.write_bytes(_ssd_solver_bytes())
    ssd = dialects.read_binary(path, caffe_pb2.SolverParameter, dialect="ssd")
    assert schema.get(ssd, "eval_type") == "detection"
    assert schema.get(ssd, "ap_version") == "11point"
    assert list(ssd.weights) == [] and not ssd.HasField("layer_wise_reduce")
    assert ssd.base_lr == pytest.approx(0.001) and ssd.max_iter == 7
    # read as BVLC's, 42 is a weights path and 41 (a string where BVLC has a bool) is unknown
    bvlc = dialects.read_binary(path, caffe_pb2.SolverParameter)
    assert list(bvlc.weights) == ["11point"] and not schema.has(bvlc, "eval_type")


def test_unknown_dialect_lists_the_known_ones(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"")
    with pytest.raises(CaffeError, match="unknown dialect 'sdd' \\(did you mean 'ssd'\\?\\); known: ssd"):
        dialects.read_binary(path, caffe_pb2.NetParameter, dialect="sdd")


def test_renumbering_leaves_every_other_byte_alone():
    net = fileio.read_binary(GOLDEN / "nets" / "slim_caffenet.caffemodel", caffe_pb2.NetParameter)
    data = net.SerializeToString()
    assert dialects.wire.renumber(data, caffe_pb2.NetParameter.DESCRIPTOR,
                                  dialects.by_key("ssd").moves) == data


def test_moves_scoped_to_a_layer_type_and_into_the_moved_message():
    """A rule scoped to ("caffe.LayerParameter", type) applies in layers of that type only, and a
    (number, rules) target renumbers the moved sub-message's own fields too."""
    import struct
    varint = dialects.wire._encode_varint

    def field(number, wire_type, payload):
        size = varint(len(payload)) if wire_type == dialects.wire.LENGTH else b""
        return varint(number << 3 | wire_type) + size + payload
    inner = field(99, dialects.wire.FIXED32, struct.pack("<f", 4.0))

    def layer(type_name):
        head = caffe_pb2.LayerParameter(name="l", type=type_name).SerializeToString()
        return field(100, dialects.wire.LENGTH, head + field(137, dialects.wire.LENGTH, inner))
    net = layer("ForkType") + layer("Embed")
    moves = {("caffe.LayerParameter", "ForkType"): {(137, dialects.wire.LENGTH): (203, {(99, 5): 1})}}
    out = caffe_pb2.NetParameter.FromString(
        dialects.wire.renumber(net, caffe_pb2.NetParameter.DESCRIPTOR, moves))
    fork, embed = out.layer
    assert list(schema.get(fork, "prior_box_param").min_size) == [4.0]
    assert not fork.HasField("embed_param")
    assert embed.HasField("embed_param") and not schema.has(embed, "prior_box_param")
