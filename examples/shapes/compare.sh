#!/usr/bin/env bash
# The 2012 experiment in miniature: AlexNet's order (LRN, then pool) against CaffeNet's
# (pool, then LRN), 3 seeds each on the built-in dataset; writes compare.png and compare.md
# here. Under 10 minutes on 2 CPU cores. Flags go to compare.py (--gpu 0, --seeds, --iters).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python examples/shapes/compare.py "$@"
