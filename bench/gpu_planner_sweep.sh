#!/usr/bin/env bash
# Structure-guided planner settings (bench/planner_sweep/*.yaml) chosen on validation specimens, then read on the test
# specimens, in one run on a lent GPU (bench/RESULTS.md "Structure-guided planner: the phase level"). Specimens are
# simulated on the machine (nothing to carry but the wheels): VAL_N of the validation split's seeds from VAL_SEED (never used
# to tune before) and the test split's first TEST_N (the first 10 are the files of bench/make_test_specimens.sh; their
# ground-truth checksums are printed to compare with the local copies). Every (config, split, class, pair of specimens) is one evaluate process, JOBS
# at a time; the JSONs come back packed in $OUT/sweep.tgz. Usage (on the device machine, or on CPU with DEVICE=cpu, slowly):
#   WHEELS=.whlmin bash bench/gpu_planner_sweep.sh
#   PYTHONPATH=$PWD .venv/bin/python bench/evaluation_summary.py out/sweep/fixed/val/*.json out/sweep/B-*/val/*.json
set -uo pipefail
DEFAULT_WHEELS=.whlmin
source "$(dirname "$0")/gpu_env.sh"
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-14}
VAL_SEED=${VAL_SEED:-30}
VAL_CONFIGS=${VAL_CONFIGS:-bench/planner_sweep/*.yaml}
TEST_CONFIGS=${TEST_CONFIGS:-$VAL_CONFIGS}
DATA=${DATA:-/tmp/sweep_data}
WORK=${WORK:-/tmp/sweep}
mkdir -p "$DATA" "$WORK"
P="python3 -m ptychoscan.cli"
start=$(date +%s)
simulate() {  # split first-seed count class
  local extra=(--scan-shape 3 3 --step-nm 1.0)
  [ "$4" = dwcnt ] && extra=(--scan-shape 3 3 --step-nm 1.15 --convergence-mrad 40 --detector-pixels 86 --detector-pixel-mrad 0.91)
  OMP_NUM_THREADS=1 $P simulate --specimen "$4" --split "$1" --seed "$2" --n-datasets "$3" "${extra[@]}" --device cpu --out "$DATA/$1/$4" >/dev/null 2>&1
}
VAL_N=${VAL_N:-${N:-10}}; TEST_N=${TEST_N:-${N:-10}}
CLASSES=${CLASSES:-flake mos2 dwcnt}
for class in $CLASSES; do  # five specimens per process
  for ((k = 0; k < VAL_N; k += 5)); do simulate val $((VAL_SEED + k)) $((VAL_N - k < 5 ? VAL_N - k : 5)) $class & done
  for ((k = 0; k < TEST_N; k += 5)); do simulate test $k $((TEST_N - k < 5 ? TEST_N - k : 5)) $class & done
done
wait
echo "simulated in $(( $(date +%s) - start )) s: $(ls "$DATA"/*/*/*.h5 | wc -l) specimens"
python3 - "$DATA" <<'EOF' | tee "$OUT/checksums.txt"
import hashlib, pathlib, sys, h5py
for path in sorted(pathlib.Path(sys.argv[1]).glob("test/*/*.h5")):
    with h5py.File(path) as f:
        print(path.name, hashlib.sha256(f["ground_truth/phase"][()].tobytes()).hexdigest()[:16])
EOF
jobs_file=$WORK/jobs.txt; : > "$jobs_file"
# The fixed patterns do not depend on a config and their draws are seeded from the dataset's and the strategy's names, so
# they run once per split (pseudo-config "fixed", no oracle); each config runs structure-guided and its oracle.
for split in val test; do
  configs=$VAL_CONFIGS; fixed="sparse-grid random low-discrepancy"
  [ $split = test ] && configs=$TEST_CONFIGS && fixed="adaptive sparse-grid random low-discrepancy full-raster-low-dose"
  for config in ${FIXED-fixed} $configs; do  # FIXED= (empty): configs only, to merge with an earlier run's fixed patterns
    name=$(basename "$config" .yaml); strategies=structure-guided
    [ "$config" = fixed ] && strategies="$fixed --no-oracle"
    for class in $CLASSES; do
      files=("$DATA/$split/$class"/*.h5)
      if [ ! -e "${files[0]}" ]; then echo "no $split $class specimens in $DATA (did the simulation fail?)" >&2; exit 2; fi
      if (( ${#files[@]} % 2 )); then echo "N must be even (two specimens per job)" >&2; exit 2; fi
      for ((first = 0; first < ${#files[@]}; first += 2)); do
        echo "$config $name $split $class $first ${files[first]} ${files[first + 1]} $strategies" >> "$jobs_file"
      done
    done
  done
done
echo "$(wc -l < "$jobs_file") evaluate jobs, $JOBS at a time"
run_job() {
  set -- $1
  local config=$1 name=$2 split=$3 class=$4 first=$5 a=$6 b=$7; shift 7
  local sampling=(--density 62.5)
  [ "$class" = dwcnt ] && sampling=(--budget 840 --chunk 100)
  mkdir -p "$WORK/out/$name/$split"
  local config_flag=(--config "$config"); [ "$config" = fixed ] && config_flag=()
  $P evaluate --datasets "$a" "$b" "${sampling[@]}" --seeds "${SEEDS:-3}" --strategies "$@" "${config_flag[@]}" --device "$DEVICE" --threads 1 \
    --json "$WORK/out/$name/$split/${class}_$first.json" > "$WORK/out/$name/$split/${class}_$first.log" 2>&1 \
    || echo "FAILED $name $split $class $first: $(tail -2 "$WORK/out/$name/$split/${class}_$first.log")"
}
export -f run_job; export P WORK DEVICE SEEDS
timeout "${SWEEP_TIMEOUT:-3600}" xargs -P "$JOBS" -I{} bash -c 'run_job "$@"' _ {} < "$jobs_file"
echo "evaluated in $(( $(date +%s) - start )) s"
find "$WORK/out" -name '*.log' -delete
tar -czf "$OUT/sweep.tgz" -C "$WORK/out" .
