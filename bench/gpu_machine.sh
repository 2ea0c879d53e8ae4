#!/usr/bin/env bash
# The GPU machine's run, as one command: device time is 15 minutes a task, start included.
#
#   bash bench/gpu_machine.sh --prepare     # here, once, with the .venv scripts/setup.sh makes: fills .dev
#                                           # (ignored through .git/info/exclude)
#   run(command="bash bench/gpu_machine.sh", carry=[".dev"], timeout_s=600)   # on the lent machine
#   REPEATS=12 bash bench/gpu_machine.sh store tests tierside-cpu   # only the steps named
#       (store, tests, tierside-cpu, tierside-gpu, ml, engine, engine-e2e; REPEATS: tierside's repeats, default 3)
#
# That machine has torch, CuPy, numpy and pytest but no Redis and no package registry, so --prepare
# gathers what the tier's tests and benchmarks need: redis-server, redis-benchmark and redis-cli from this
# machine's Debian packages with their shared libraries (each binary runs through a wrapper that
# sets LD_LIBRARY_PATH for it alone), and wheels for Python 3.12 of redis-py, hiredis, structlog,
# zstandard and the test plugins, in the versions this checkout's .venv has.
#
# The run writes each step's output under $OUT as it goes, most valuable first, and bounds every
# step with its own timeout so that one hang cannot take the rest:
#   1. gpu_store.txt   the CuPy value store: put, get and gathers against dict lookups
#   2. tier_tests.txt  the tier's unit and end-to-end tests with every proxy on the GPU store
#                      (PREDIS_TEST_HOT_TIER=gpu) and the CuPy cases of the store tests
#   3. tierside_cpu.txt, tierside_gpu.txt   redis-benchmark GET, direct against the proxy's tier
#   4. gpu_check.txt   torch features, batched inference, training steps, a real train()
#   5. engine.txt      the live engine's batched model step on the GPU, at batch 64 and 1,024
#   6. engine_e2e.txt  the live prefetching tests (the model arm's included) on that machine
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    grep -qxF '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >>.git/info/exclude
    rm -rf .dev && mkdir -p .dev/bin .dev/real .dev/lib .dev/whl
    for b in redis-server redis-benchmark redis-cli; do
        cp -L "$(command -v $b)" .dev/real/$b
        printf '#!/bin/sh\nd=$(cd "$(dirname "$0")/.." && pwd)\nLD_LIBRARY_PATH="$d/lib" exec "$d/real/%s" "$@"\n' $b >.dev/bin/$b
        chmod +x .dev/bin/$b
    done
    # Every library the two binaries load, except the C runtime's own (the machine has newer).
    ldd .dev/real/* | awk '$3 ~ /^\// {print $3}' | sort -u |
        grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' | xargs -I{} cp -L {} .dev/lib/
    py=.venv/bin/python
    pins=()
    for name in redis hiredis structlog zstandard pytest pluggy iniconfig pytest-asyncio pytest-timeout hypothesis; do
        pins+=("$name==$($py -m pip show $name | awk '/^Version/{print $2}')")
    done
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .dev/whl "${pins[@]}"
    du -sh .dev
    exit 0
fi

all="store tests tierside-cpu tierside-gpu ml"
steps="$*"
for name in $steps; do
    [[ " $all " == *" $name "* ]] || { echo "no step '$name' (steps: $all)" >&2; exit 2; }
done
want() { [[ -z "$steps" || " $steps " == *" $1 "* ]]; }
out=${OUT:-/tmp/gpu_machine}
mkdir -p "$out"
[[ -d .dev/whl ]] || { echo "no .dev: run 'bash bench/gpu_machine.sh --prepare' here and carry .dev" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=$PWD/.dev/bin:$PATH PYTHONUNBUFFERED=1
{ nvidia-smi -L; nproc; python3 --version; redis-server --version; } 2>&1 | tee "$out/environment.txt"

step() {  # step SECONDS FILE COMMAND...: run it bounded, its output to the screen and to FILE
    local limit=$1 file=$2
    shift 2
    echo "== $* (limit ${limit} s)" | tee "$out/$file"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$file"
    echo "== exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/$file"
}

want store && step 60 gpu_store.txt python3 -m bench.gpu_check --only environment,store --out ""
want tests && step 120 tier_tests.txt env PREDIS_TEST_HOT_TIER=gpu python3 -m pytest -q -p no:cacheprovider \
    tests/unit/test_tier.py tests/e2e/test_tier.py tests/e2e/test_compat.py tests/e2e/test_ordering.py
repeats=${REPEATS:-3}
want tierside-cpu && step $((20 * repeats)) tierside_cpu.txt python3 -m bench.tierside --repeats "$repeats" --pin
want tierside-gpu && step $((20 * repeats)) tierside_gpu.txt python3 -m bench.tierside --repeats "$repeats" --pin -- --hot-tier gpu
want ml && step 270 gpu_check.txt python3 -m bench.gpu_check --only features,inference,training --train-seconds 100 --out ""
# The live engine's batched step on the GPU (issue 20's 5 us a read at batch 1,024): a web model
# trained here, stepped over another seed's reads.
want engine && step 200 engine.txt sh -c 'set -e; d=$(mktemp -d)
    python3 -m proxy.cli gen web -n 30000 --seed 1 -o $d/w1.parquet; python3 -m proxy.cli gen web -n 30000 --seed 2 -o $d/w2.parquet
    python3 -m proxy.cli train $d/w1.parquet -o $d/m --epochs 3 --quiet --device cuda --max-seconds 60
    for b in 64 1024; do python3 -m bench.mlbench --model $d/m --log $d/w2.parquet --batch $b --device cuda --repeats 3 --batched-only; done'
want engine-e2e && step 120 engine_e2e.txt python3 -m pytest -q -p no:cacheprovider tests/e2e/test_prefetch.py tests/unit/test_engine.py
exit 0  # each step's own exit status is in its file
