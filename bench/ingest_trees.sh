#!/usr/bin/env bash
# Ingest rate of two source trees of ptychoscan, alternately, each run against libertem-dectris in the same process
# (bench/ingest_rate.py): the before/after figures of a change on this noisy shared machine, as ratios within each run.
#
#   bench/ingest_trees.sh BEFORE_TREE AFTER_TREE [ROUNDS] [-- extra ingest_rate.py arguments]
#   e.g. git worktree add /tmp/before 7a335e0 && bench/ingest_trees.sh /tmp/before "$PWD" 3
#
# Each tree gets its own build cache of the compiled receive loop (its C sources may differ). Python: $PYTHON, else this
# checkout's .venv. Prints each run's summary lines (service and peer frames/s, the ratio), tree by tree.
# With --per-thread, also the service threads' CPU over each steady window.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,8p' "$0"
    exit 2
fi
before=$(cd "$1" && pwd)
after=$(cd "$2" && pwd)
rounds=${3:-3}
shift $(( $# >= 3 ? 3 : 2 ))
[[ ${1:-} == "--" ]] && shift
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
for round in $(seq 1 "$rounds"); do
    for tree in "$before" "$after"; do
        echo "=== round $round: $tree ($(git -C "$tree" rev-parse --short HEAD))"
        cache=${TMPDIR:-/tmp}/ptychoscan-native-$(echo "$tree" | md5sum | cut -c1-8)
        (cd "$tree" && PTYCHOSCAN_NATIVE_CACHE=$cache PYTHONPATH=$tree "$python" bench/ingest_rate.py \
            --frames 60000 --peer-frames 150000 --repeats 1 "$@" 2>&1 | grep -E "^(libertem|service|ratio| +stream|  [0-9]: CPU| +store)")
    done
done
