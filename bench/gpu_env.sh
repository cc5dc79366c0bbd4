# Sourced by the scripts we run on a lent GPU machine: $OUT for the files that come back, unbuffered Python, and the
# wheels carried in $WHEELS (default: the caller's) installed into /tmp/site (the machine has no network).
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
WHEELS=${WHEELS:-$DEFAULT_WHEELS}
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
