#!/usr/bin/env bash
# The converged study (issue #15) on a lent GPU machine: one prepared, time-boxed run that brings
# everything back to resume here. Several runs share the one GPU and the machine's CPU cores:
#
#   - MD on the GPU: the models carried in .gpu/runs (by default the aspirin E+F N=100 models of
#     converged_md.sh whose MD has not run here), one process per model, NVE then NVT;
#   - training: one rmd17.py driver per line of $PLAN ("gpu|cpu JOBS SLICE-OPTIONS"; default
#     the aspirin E+F N=50 cells on the GPU, eager, and the ethanol ones on the CPU cores).
#
# At STOP seconds everything still running stops; training resumes from its last checkpoint and MD
# from its last saved state (every 2,000 steps) when this checkout's drivers are started again. Each
# result records the machine that produced it (attempts.jsonl of a run, `device` of an MD run).
#
# Prepared here by benchmarks/converged_device_prepare.sh (the data, the MD models, the commit and
# the wheels the machine lacks, in the ignored folders .gpu/ and .whl/); run there from the
# checkout's root with $OUT set:  bash benchmarks/converged_device.sh [STOP_SECONDS]
# It leaves $OUT/back.tar.xz.* (unpack here with: cat back.tar.xz.* | tar -xJf -) and
# $OUT/device.log. REHEARSAL=1 rehearses it on a machine without a GPU (installs nothing, runs
# everything on the CPU): bash benchmarks/converged_device.sh 90 with OUT and REHEARSAL set.
set -uo pipefail
STOP=${1:-400}
GPU=cuda ACCELERATOR=gpu
[ -n "${REHEARSAL:-}" ] && GPU=cpu ACCELERATOR=cpu
: "${OUT:?set OUT to the folder whose files come back}"
SRC=$PWD
W=/tmp/piwsl_device
log() { echo "[$SECONDS s] $*"; }

# 1. The packages the machine lacks, from the carried wheels; the checkout's layout (main beside
#    shared/data/rmd17), so that every recorded path (../shared/data/...) reads as it does here.
if [ -z "${REHEARSAL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
rm -rf "$W" && mkdir -p "$W/shared/data" "$W/main" || exit 1
tar -C "$SRC" --exclude=./.venv --exclude=./runs --exclude=./.git -cf - . | tar -C "$W/main" -xf -
cd "$W/main" || exit 1
ln -sfn "$W/main/.gpu/rmd17" "$W/shared/data/rmd17"
mkdir -p runs logs && cp -a .gpu/runs/. runs/
export PYTHONPATH=/tmp/site:$PWD/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
export PIWSL_BENCHMARK_COMMIT="$(cat .gpu/COMMIT)"
python3 -c "import torch, ase, vesin, pydantic, lightning, piwsl.cli
print('torch', torch.__version__, 'GPU', torch.cuda.is_available() and torch.cuda.get_device_name(0))" || exit 1
touch logs/.start
log "ready in $W/main"

# 2. The CUDA tests of the suite (skipped on machines without a GPU; NO_TESTS=1: not run).
[ -n "${NO_TESTS:-}" ] || timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_device.py >logs/test_device.log 2>&1 &

# 3. MD of the models carried in .gpu/runs, on the GPU.
MD=(python3 benchmarks/md_stability.py --batched --trajectories 8 --out benchmarks/results/md_converged
  --no-progress --device "$GPU")
md_pids=()
for model in .gpu/runs/benchmarks/*/best_model.pt; do
  [ -f "$model" ] || continue
  model=runs/${model#.gpu/runs/}
  name=$(basename "$(dirname "$model")")
  ("${MD[@]}" "$model" --protocols nve300 && "${MD[@]}" "$model" --protocols nvt300) \
    >"logs/md_$name.log" 2>&1 &
  md_pids+=($!)
done

# 4. The grid cells, one driver per line of $PLAN: "gpu|cpu JOBS SLICE-OPTIONS" (GPU runs eager).
: "${PLAN:=gpu 3 --molecules aspirin --regimes EF_50
cpu 5 --molecules ethanol --regimes EF_50}"
grids=()
k=0
while read -r where jobs slice; do
  [ -n "$where" ] || continue
  k=$((k + 1))
  set_gpu=()
  [ "$where" = gpu ] && set_gpu=(--set "training.accelerator=$ACCELERATOR" training.compile=false)
  [ "$where" = cpu ] && set_gpu=(--set training.accelerator=cpu)
  # shellcheck disable=SC2086  # the slice options are words
  python3 benchmarks/rmd17.py --suite converged --stop-after $((STOP - SECONDS)) --jobs "$jobs" \
    $slice "${set_gpu[@]}" >"logs/grid_${k}_$where.log" 2>&1 &
  grids+=($!)
done <<<"$PLAN"

while ((SECONDS < STOP)); do
  sleep 20
  log "GPU $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null); load $(cut -d' ' -f1 /proc/loadavg)"
done
log "stopping"
for pid in "${md_pids[@]}"; do pkill -TERM -P "$pid"; kill -TERM "$pid"; done 2>/dev/null
wait "${grids[@]}"
log "grid drivers done"; tail -n 3 logs/grid_*.log logs/test_device.log
grep -h "steps/s" logs/md_*.log 2>/dev/null

# 5. Back: the new results, the run folders (finished: without checkpoints; stopped: with them),
#    the MD folders of the carried models, the logs.
paths=(logs $(find benchmarks/results/rmd17/converged -name '*.json' -newer logs/.start))
skip=()
for d in runs/benchmarks/*/; do
  d=${d%/}
  [ -e "$d/attempts.jsonl" ] || continue  # trained here
  [ -f "$d/summary.json" ] && skip+=("--exclude=$d/checkpoints" "--exclude=$d/final_model.pt")
  paths+=("$d")
done
for model in .gpu/runs/benchmarks/*; do
  d=benchmarks/results/md_converged/md_stability/$(basename "$model")
  [ -d "$d" ] && paths+=("$d")
done
tar "${skip[@]}" -cf - "${paths[@]}" | xz -T0 -3 | split -b 15m - "$OUT/back.tar.xz."
ls -la "$OUT"
log "done"
