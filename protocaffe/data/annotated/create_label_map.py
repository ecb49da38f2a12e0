"""``protocaffe create_label_map [FLAGS] MAPFILE OUTFILE``, as the SSD fork's tool.

Reads lines of ``name``, ``name label`` or ``name label display_name`` (fields split at any
character of --delimiter; every line with as many fields as the first) and writes them as a
LabelMap in protobuf text. Names alone are numbered from 0, or from 1 after
``none_of_the_above`` (display name ``background``) with --include_background.
"""
from protocaffe import schema
from protocaffe.data.annotated.annotations import label_file_to_map
from protocaffe.errors import CaffeError
from protocaffe.flags import Flags


def run(argv):
    f = Flags("create_label_map", __doc__.splitlines()[0],
              [("mapfile", "lines of 'name [label] [display_name]'"), ("outfile", "the LabelMap to write")])
    f.flag("include_background", False, "put none_of_the_above first as class 0")
    f.flag("delimiter", " ", "the characters that separate fields in MAPFILE")
    args = f.parse(argv)
    label_map = label_file_to_map(args.mapfile, args.include_background, args.delimiter)
    try:
        with open(args.outfile, "w") as out:
            out.write(schema.to_text(label_map))
    except OSError as e:
        raise CaffeError(f"{args.outfile}: cannot write: {e.strerror}") from None
    return 0
