#!/usr/bin/env bash
# Issue 16's GPU measurements in one command, for a lent GPU machine whose time is short (this
# workplace lends an H200 for 15 minutes a task, one command at most 10 of them; PERFORMANCE.md).
# Prepare the wheels where pip works (bench/gpu_wheels.sh -> .whl/), then run this at the
# repository root there, carrying .whl, with a 600 s limit:
#
#     bash bench/gpu_wheels.sh                        # here, once
#     bash bench/gpu_checks.sh                        # there (device tool: carry [".whl"])
#
# Stages, most important first; each gets at most its own limit and is skipped when less than
# half of that is left of GPU_CHECKS_BUDGET_S (default 540 s), so the command ends inside its limit
# and what ran comes back. Every stage writes its log under $OUT (default /tmp/gpu_checks):
#   env.txt         the GPU, the Python packages used
#   train_step.*    PERFORMANCE.md's H200 table: open_clip vs emocap_jax (remat dots and full),
#                   ViT-B/16, batch 256, bf16, on one synthetic batch (the step alone)
#   fed.*           the end-to-end row: the remat-dots step fed by the Grain training pipeline
#                   (3,000 fabricated 256 px faces made on the CPUs while the first stage runs,
#                   16 workers): images/s, data-wait share and MFU next to the step-only figure
#   batch2x.log     the step at twice the batch, 512 (does a larger batch raise MFU?)
#   profile.log     where the step's time goes by XLA operation (bench/step_profile.py)
#   skipped.txt     the stages left out for lack of time, if any
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS  # the budget counts the installation too: the device's limit does
out=${OUT:-/tmp/gpu_checks}
budget=${GPU_CHECKS_BUDGET_S:-540}
wheels=${GPU_CHECKS_WHEELS:-.whl}
# A dry run of the script on a CPU: GPU_CHECKS_MODEL=tiny GPU_CHECKS_BATCH=4 GPU_CHECKS_PRECISION=fp32
model=${GPU_CHECKS_MODEL:-ViT-B-16}
batch=${GPU_CHECKS_BATCH:-256}
precision=${GPU_CHECKS_PRECISION:-bf16}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# Later stages compile the same step as the first (same model, batch, remat): from the cache.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/gpu_checks_jax_cache}

if compgen -G "$wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_checks_site "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/gpu_checks_site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "no wheels in $wheels: using the installed packages" >&2
fi

{
    nvidia-smi -L 2>&1 || true
    python3 - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain", "numpy", "torch",
             "open_clip"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except Exception as e:  # a missing package shows here, before the stages need it
        print(name, "MISSING:", type(e).__name__, e)
import jax
print("devices", jax.devices())
import emocap_jax.train, emocap_jax.data.pipeline  # the project imports with these packages
EOF
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

stage() {  # stage NAME LIMIT_S COMMAND...: runs COMMAND with its output in $out/NAME.log
    local name=$1 limit=$2
    shift 2
    local left=$((budget - (SECONDS - start)))
    if (( left < limit / 2 )); then
        echo "$name: skipped, $left s of the budget left (wants up to $limit s)" \
            | tee -a "$out/skipped.txt"
        return 0
    fi
    (( limit > left )) && limit=$left
    echo "== $name (at most $limit s): $*"
    timeout -k 10 "$limit" "$@" > "$out/$name.log" 2>&1
    local status=$?
    tail -n 25 "$out/$name.log"
    echo "== $name: exit status $status after $((SECONDS - start)) s in all"
}

# The fabricated faces of the fed stage, made on the CPUs while the GPU runs the first stage
# (bench/train_step.py --data synthetic reuses them from /tmp/emocap_bench_input).
python3 -c "
import sys; sys.path.insert(0, 'bench')
from input_pipeline import fabricate_dataset, parse_args
fabricate_dataset(parse_args([]))" > "$out/faces.log" 2>&1 &
faces_pid=$!

common=(--model "$model" --precision "$precision" --warmup 3)
stage train_step 300 python3 bench/train_step.py "${common[@]}" --batch "$batch" --steps 10 \
    --impls open_clip,emocap --remat dots,full --json "$out/train_step.json"
wait "$faces_pid" || echo "making the faces failed: $(tail -n 5 "$out/faces.log")"
stage fed 180 python3 bench/train_step.py "${common[@]}" --batch "$batch" --steps 20 \
    --impls emocap --remat dots --data synthetic --data-workers 16 --json "$out/fed.json"
stage batch2x 120 python3 bench/train_step.py "${common[@]}" --batch $((2 * batch)) --steps 10 \
    --impls emocap --remat dots
stage profile 120 python3 bench/step_profile.py --model "$model" --precision "$precision" \
    --batch "$batch" --remat dots --top 30
rm -f "$out/faces.log"  # eight files at most come back; its tail is above when it failed
echo "done in $((SECONDS - start)) s; logs in $out: $(ls "$out" | tr '\n' ' ')"
