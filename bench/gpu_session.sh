#!/usr/bin/env bash
# What we run on a lent GPU machine (no network there): install the wheels carried in .whl,
# check the CUDA paths with the test suite, then the GPU benchmarks. Logs go to $OUT (or ./out/gpu).
# The GPU machine has torch, numpy, h5py, httpx, prometheus-client and tqdm but not the rest; on this
# machine, once: python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#   --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#   fastapi starlette annotated-doc annotated-types pydantic pydantic-core pydantic-settings python-dotenv \
#   typing-inspection typing-extensions uvicorn pyzmq lz4 bitshuffle ase opentelemetry-api [py-spy] [libertem-dectris: ingest]
# (pin the versions of .venv; .whl is ignored by git and carried to the machine).
# Usage: bash bench/gpu_session.sh [tests|recon|compute|latency|ingest|profile|ab|evaluate|qvp|all]...   (default: all but profile, ab, evaluate, qvp;
#   ab: the decision compute of .ab_old, e.g. `git archive OLD recon service policy ptychoscan sim_microscope bench | tar -x -C .ab_old`, then this tree)
set -uo pipefail
DEFAULT_WHEELS=.whl
source "$(dirname "$0")/gpu_env.sh"
steps=${*:-all}
GPUDATA=${GPUDATA:-.gpudata/test}  # evaluate: specimens carried to the machine (gzip copies of out/data/test/{flake,mos2})
has() { [[ " $steps " == *" $1 "* || ( " $steps " == *" all "* && $1 != profile && $1 != ab && $1 != evaluate && $1 != qvp ) ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee -a "$OUT/gpu.txt"
echo "cpus $(nproc)" | tee -a "$OUT/gpu.txt"
if has evaluate && [ -d "$GPUDATA" ]; then  # the evaluation table (bench/evaluation_table.sh) on the GPU, in the background
  # beside the tests: each class of EVAL_CLASSES in parts of EVAL_PER_PART specimens, one process each on the one GPU; one
  # JSON per part (bench/evaluation_summary.py merges them) and the first seed's reconstructions, packed into
  # $OUT/eval_parts.tgz at the end; one log. Wheels: evaluate needs only pydantic and ase (WHEELS=.whlmin, 6 MB).
  mkdir -p "$OUT/parts"
  per=${EVAL_PER_PART:-2}
  for class in ${EVAL_CLASSES:-flake mos2}; do
    files=("$GPUDATA/$class"/*.h5)
    if [ "$class" = dwcnt ]; then sampling=(--budget 840 --chunk 100); else sampling=(--density 62.5); fi
    for ((first = 0; first < ${#files[@]}; first += per)); do
      (timeout "${EVAL_TIMEOUT:-480}" python3 -m ptychoscan.cli evaluate --datasets "${files[@]:first:per}" "${sampling[@]}" --seeds 3 \
        --device cuda --threads 1 --json "$OUT/parts/${class}_$first.json" --save-reconstructions "$OUT/parts/reconstructions" 2>&1 \
        | tr '\r' '\n' | grep -v "it/s\|pos/s\|pass/s\|^ *$" | sed "s|^|$class/$first |" >> "$OUT/evaluate.log") &
    done
  done
fi
if has qvp; then  # not part of "all": quality against the number of positions (bench/quality_vs_positions.py), QVP_N test
  # specimens per class simulated on the machine, one process per class in the background beside the tests
  for class in flake mos2 dwcnt; do
    extra=(--scan-shape 3 3 --step-nm 1.0); budgets=(100 200 400 800); chunk=50
    [ $class = dwcnt ] && extra=(--scan-shape 3 3 --step-nm 1.15 --convergence-mrad 40 --detector-pixels 86 --detector-pixel-mrad 0.91) \
      && budgets=(210 420 840 1680) && chunk=100
    (OMP_NUM_THREADS=1 python3 -m ptychoscan.cli simulate --specimen $class --split test --seed 0 --n-datasets "${QVP_N:-2}" "${extra[@]}" \
       --device cpu --out /tmp/qvp/$class > /dev/null 2>&1 \
     && timeout "${QVP_TIMEOUT:-200}" python3 bench/quality_vs_positions.py /tmp/qvp/$class/*.h5 --budgets "${budgets[@]}" --chunk $chunk \
       --device cuda --threads 1 --json "$OUT/qvp_$class.json" --png "$OUT/qvp_$class.png" > "$OUT/qvp_$class.log" 2>&1) &
  done
fi
if has tests; then
  # The suite picks CUDA where a test asks for device "auto".
  timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -q --maxfail=20 -p no:cacheprovider ${TESTS:-tests} 2>&1 | tee "$OUT/tests.log" | tail -25
fi
if has recon; then
  timeout "${BENCH_TIMEOUT:-90}" python3 bench/recon_batched.py --device cuda --threads 4 2>&1 | tee -a "$OUT/bench.log"
  timeout "${BENCH_TIMEOUT:-90}" python3 bench/recon_batched.py --device cuda --threads 4 --scans 96 2>&1 | tee -a "$OUT/bench.log"
fi
if has compute; then
  timeout "${BENCH_TIMEOUT:-90}" python3 bench/decision_compute.py --device cuda --threads 4 2>&1 | tee -a "$OUT/bench.log"
fi
if has ab && [ -d .ab_old ]; then  # not part of "all": the decision compute of an older tree (.ab_old, a git archive) and this one, same machine
  for tree in .ab_old .; do
    (cd $tree && PYTHONPATH=$PWD:/tmp/site python3 bench/decision_compute.py --device cuda --threads 4 --repeats 20) 2>&1 | tail -7 | sed "s|^|$tree |" | tee -a "$OUT/ab.log"
  done
fi
if has profile; then  # not part of "all": torch.profiler tables of one decision's update
  python3 bench/decision_compute.py --device cuda --threads 4 --sessions 1 --chunks 50 --repeats 5 --profile 2>&1 | tee "$OUT/profile.log"
fi
if has latency; then
  timeout "${BENCH_TIMEOUT:-90}" python3 bench/service_latency.py --device cuda --threads 4 --budget 500 2>&1 | tee -a "$OUT/bench.log"
  timeout "${BENCH_TIMEOUT:-90}" python3 bench/service_latency.py --device cuda --threads 4 --budget 500 --switch-interval 0.0005 2>&1 | tee -a "$OUT/bench.log"
  timeout "${BENCH_TIMEOUT:-90}" python3 bench/service_latency.py --device cuda --threads 4 --budget 500 --backend overhead-only 2>&1 | tee -a "$OUT/bench.log"
  timeout "${BENCH_TIMEOUT:-90}" python3 bench/service_latency.py --device cuda --threads 4 --budget 500 --sessions 8 --stagger-s 0.1 2>&1 | tee -a "$OUT/bench.log"
fi
if has ingest; then  # ingest against libertem-dectris on that machine's cores (its compiled loop is built there: needs cc)
  if python3 -c "import libertem_dectris" 2> /dev/null; then
    timeout "${BENCH_TIMEOUT:-90}" python3 bench/ingest_rate.py --frames 150000 --peer-frames 250000 --repeats 3 --per-thread 2>&1 \
      | grep -v "TestClient" | tee -a "$OUT/ingest.log"
  else
    echo "ingest: libertem-dectris is not installed (carry its wheel in .whl)" | tee -a "$OUT/ingest.log"
  fi
fi
wait  # the evaluations
if [ -d "$OUT/parts" ]; then tar -czf "$OUT/eval_parts.tgz" -C "$OUT" parts && rm -r "$OUT/parts"; fi
if compgen -G "$OUT/qvp_*" > /dev/null; then (cd "$OUT" && tar -czf qvp.tgz qvp_* && rm qvp_*); fi  # (few files come back)
