#!/usr/bin/env bash
# The held-out test specimens of the evaluation table (bench/RESULTS.md "Adaptive scanning at the paper's density"):
# 10 per class from the test split's seeds, the paper's beams. Each file holds its ground truth and a 3 x 3 raster that
# spans the field; `ptychoscan evaluate` simulates every position a strategy chooses from the ground truth.
set -euo pipefail
OUT=${1:-out/data/test}
N=${N:-10}
P="${PTYCHOSCAN:-.venv/bin/ptychoscan}"
# MoS2 monolayer and MoS2 flake edge: 60 kV, 33 mrad, 64 x 64 patterns (2x binned, 1.68 mrad), 2 x 2 nm field
"$P" simulate --specimen mos2 --split test --n-datasets "$N" --scan-shape 3 3 --step-nm 1.0 --out "$OUT/mos2"
"$P" simulate --specimen flake --split test --n-datasets "$N" --scan-shape 3 3 --step-nm 1.0 --out "$OUT/flake"
# double-walled nanotube: 60 kV, 40 mrad, 86 x 86 patterns at 0.91 mrad, 2.3 x 2.3 nm field
"$P" simulate --specimen dwcnt --split test --n-datasets "$N" --scan-shape 3 3 --step-nm 1.15 --convergence-mrad 40 \
    --detector-pixels 86 --detector-pixel-mrad 0.91 --out "$OUT/dwcnt"
