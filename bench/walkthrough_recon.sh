#!/usr/bin/env bash
# The README's service walk-through ("Acquisition service"), run as written but on ports of its own: serve +
# sim-detector --specimen mos2 + sim-scan, then the session's reconstruction as PNG (Accept: image/png) once the
# converged one is served, and its lattice score (bench/lattice_ring.py). bench/RESULTS.md "Walk-through
# reconstruction" (issue 17). ~0.5-1.5 min per run on 2 CPU cores.
# usage: bench/walkthrough_recon.sh OUTDIR "SIM-DETECTOR FLAGS" "SIM-SCAN FLAGS"
#   e.g. bench/walkthrough_recon.sh bench/out/walk/df10 "--defocus-nm 10" "--defocus-nm 10"
set -uo pipefail
D=$1; DETX=${2:-}; SCANX=${3:-}
P="${PTYCHOSCAN:-.venv/bin/ptychoscan}"
PY="${PYTHON:-.venv/bin/python}"
BASE=${BASE_PORT:-$(( 20000 + RANDOM % 20000 ))}
SP=$BASE; DP=$((BASE + 1)); RP=$((BASE + 2))
rm -rf "$D"; mkdir -p "$D"
"$P" serve --host 127.0.0.1 --port $SP --storage "$D/sessions" --api-key KEY --detector tcp://127.0.0.1:$DP > "$D/serve.log" 2>&1 &
SERVE=$!
# shellcheck disable=SC2086
"$P" sim-detector --specimen mos2 --port $DP --rest-port $RP $DETX > "$D/det.log" 2>&1 &
DET=$!
trap 'kill $SERVE $DET 2>/dev/null' EXIT
for _ in $(seq 90); do
  curl -sf -o /dev/null http://127.0.0.1:$SP/api/v1/sessions && curl -sf -o /dev/null http://127.0.0.1:$RP/sim/api/1/stream && break
  sleep 1
done
t0=$(date +%s.%N)
# shellcheck disable=SC2086
"$P" sim-scan --service http://127.0.0.1:$SP --microscope http://127.0.0.1:$RP --api-key KEY $SCANX > "$D/scan.log" 2>&1 || { tail -3 "$D/scan.log"; exit 1; }
t1=$(date +%s.%N)
ID=$(grep -o '"session_id": "[0-9a-f]*"' "$D/scan.log" | head -1 | cut -d'"' -f4)
state=""
for _ in $(seq 120); do
  state=$(curl -s http://127.0.0.1:$SP/api/v1/sessions/"$ID" | "$PY" -c 'import json, sys; print((json.load(sys.stdin).get("converged_reconstruction") or {}).get("state"))')
  [ "$state" = done ] || [ "$state" = failed ] && break
  sleep 1
done
t2=$(date +%s.%N)
curl -s -D "$D/png_headers.txt" -H 'Accept: image/png' http://127.0.0.1:$SP/api/v1/sessions/"$ID"/reconstruction -o "$D/recon.png"
curl -s http://127.0.0.1:$SP/api/v1/sessions/"$ID" > "$D/status.json"
echo "session $ID: scan $(echo "$t1 - $t0" | bc) s, converged $state $(echo "$t2 - $t1" | bc) s after; $(grep -h 'converged reconstruction of' "$D/serve.log" | sed 's/.*: //')"
grep -i "x-reconstruction-kind" "$D/png_headers.txt"
"$PY" bench/lattice_ring.py "$D"
