#!/usr/bin/env bash
# The shapes detector from scratch: draw the detection set, pack it into LMDBs of
# AnnotatedDatum, train (the mAP of each test round is logged as detection_eval), then draw
# the trained net's detections on eight validation images into examples/shapes_ssd/detections.png.
# Run from the repository root; extra flags go to `protocaffe train`.
set -euo pipefail
cd "$(dirname "$0")/../.."
# the net is small: one thread per process is as fast, and much faster on a loaded machine
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ex=examples/shapes_ssd
data=$ex/data
if [ ! -d $data/val_lmdb ]; then
  protocaffe make_shapes --detection --size 64 --train 2000 --val 300 --out $data
  for split in train val; do
    protocaffe convert_annoset --anno_type=detection --label_map_file=$data/labelmap.prototxt \
      --encoded --encode_type=jpg $data/ $data/$split.txt $data/${split}_lmdb
  done
fi
protocaffe train --solver $ex/solver.prototxt "$@"
head -8 $data/val.txt | cut -d' ' -f1 | sed "s|^|$data/|" > $data/detect_list.txt
protocaffe detect $ex/deploy.prototxt $ex/shapes_ssd_iter_3500.caffemodel $data/detect_list.txt \
  --mean_value 127.5 --normalize_value 0.007843 --confidence_threshold 0.5 \
  --label_map_file $data/labelmap.prototxt --out_file $ex/detections.txt --tile $ex/detections.png
