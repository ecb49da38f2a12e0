#!/usr/bin/env bash
# Train the CaffeNet-shaped example on the built-in shapes dataset, building the data first
# if it is missing. Run from the repository root; extra flags go to `protocaffe train`.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -d examples/shapes/data/train_lmdb ]; then
  protocaffe make_shapes --out examples/shapes/data
fi
exec protocaffe train --solver examples/shapes/solver.prototxt "$@"
