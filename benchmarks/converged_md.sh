#!/usr/bin/env bash
# MD robustness of the converged models (issue #15): 8 trajectories per model of 50 ps Nosé–Hoover
# NVT at 300 K (Δt = 0.5 fs, start frames from the test split) and 20 ps NVE from 300 K, all
# trajectories of a model as one batch of replicas. Model by model (the E + F models of all seeds
# first, the paper's first-order cell included, then seed by seed the aspirin Δ and Δ + PIWSL
# models, the ethanol MP2/CBS model of seed 0 after the first Δ model, its seeds 1–2 last), each
# model's NVT run and then its NVE run, so drift and survival arrive together; each (model,
# protocol) run is reused when finished and a killed one resumes from its saved state, so
# the script can be started again at any time. The report of all finished runs is rewritten after
# each run.
#
# The model runs compiled (--compile: the same function, ~4× faster per call for these models,
# md_inference_speed.md; runs finished eagerly are reused, and each run records which it was).
#
# Several copies may run at once (one per free core): each (model, protocol) run is taken under a
# lock (flock) in $OUT/locks, and a copy skips the runs another copy holds.
#
#   bash benchmarks/converged_md.sh            # from the checkout, after benchmarks/rmd17.py --suite converged
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/md_converged
RUNS=runs/benchmarks
MD=(python benchmarks/md_stability.py --batched --compile --trajectories 8 --out "$OUT" --no-progress)
BUSY=75  # flock's exit status when another copy holds the lock
mkdir -p "$OUT/locks"
models() {  # the E + F models of every seed first (fast, compiled), then seed by seed the models
  # that evaluate GFN2-xTB at every step (Δ, MP2/CBS, Δ + PIWSL: ~1–3 h each)
  local s m f
  for s in 0 1 2; do
    for m in painn32_conservative-EF_100-plain painn32_conservative-EF_100-piwsl_2nd \
             painn32_direct-EF_100-plain painn32_direct-EF_100-piwsl_2nd painn32_direct-EF_100-piwsl; do
      f="$RUNS/aspirin-$m-s$s/best_model.pt"
      [ -f "$f" ] && echo "$f"
    done
  done
  for s in 0 1 2; do
    f="$RUNS/aspirin-painn32_conservative-E_only_1000-delta-s$s/best_model.pt"
    [ -f "$f" ] && echo "$f"
    f="runs/mp2cbs/N300_delta_ft_plain_s$s/best_model.pt"  # the issue asks for one: seed 0 here,
    [ "$s" -eq 0 ] && [ -f "$f" ] && echo "$f::builtin:ethanol_test"  # seeds 1–2 at the end
    f="$RUNS/aspirin-painn32_conservative-E_only_1000-delta_piwsl_2nd-s$s/best_model.pt"
    [ -f "$f" ] && echo "$f"
  done
  for s in 1 2; do
    f="runs/mp2cbs/N300_delta_ft_plain_s$s/best_model.pt"
    [ -f "$f" ] && echo "$f::builtin:ethanol_test"
  done
  return 0
}
run() {  # one (model, protocol) run, unless another copy of this script holds it
  local model=$1 protocol=$2 label
  label=$(basename "$(dirname "${model%%::*}")")
  flock -n -E "$BUSY" "$OUT/locks/$label-$protocol.lock" "${MD[@]}" "$model" --protocols "$protocol" \
    || { local rc=$?; [ "$rc" -eq "$BUSY" ] && echo "[$label $protocol] another copy runs it"; [ "$rc" -eq "$BUSY" ]; }
}
mapfile -t ALL < <(models)
for model in "${ALL[@]}"; do
  for protocol in nvt300 nve300; do
    run "$model" "$protocol"
    flock "$OUT/locks/report.lock" "${MD[@]}" --summary-only "${ALL[@]}" --protocols nvt300 nve300
  done
done
