#!/usr/bin/env bash
# The evaluation table at the paper's density on held-out specimens (bench/RESULTS.md "Adaptive scanning at the
# paper's density"): every strategy, 10 specimens x 3 noise seeds per class. MoS2 monolayer and MoS2 flake edge at
# 62.5 positions per nm^2 (250 over 2 x 2 nm, the paper's 2.5 %), the DWCNT case at the paper's 840 positions over
# 2.3 x 2.3 nm (159 per nm^2) in sub-sequences of 100 (the paper: 50-100). Needs the specimens of bench/make_test_specimens.sh. ~3-4 h on 2 CPU cores (flake 10 x 3: 47 min; the converged final reconstruction of the dense rasters dominates).
set -euo pipefail
DATA=${1:-out/data/test}
OUT=${2:-bench/out/evaluation}
SEEDS=${SEEDS:-3}
P="${PTYCHOSCAN:-.venv/bin/ptychoscan}"
mkdir -p "$OUT"
for class in flake mos2; do
  "$P" evaluate --datasets "$DATA/$class"/*.h5 --density 62.5 --seeds "$SEEDS" --json "$OUT/$class.json" --png "$OUT/$class.png" \
      --save-reconstructions "$OUT/reconstructions" | tee "$OUT/$class.txt"
done
"$P" evaluate --datasets "$DATA/dwcnt"/*.h5 --budget 840 --chunk 100 --seeds "$SEEDS" --json "$OUT/dwcnt.json" --png "$OUT/dwcnt.png" \
    --save-reconstructions "$OUT/reconstructions" | tee "$OUT/dwcnt.txt"
