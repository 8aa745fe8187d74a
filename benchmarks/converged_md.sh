#!/usr/bin/env bash
# MD robustness of the converged models (issue #15): 8 trajectories per model of 50 ps Nosé–Hoover
# NVT at 300 K (Δt = 0.5 fs, start frames from the test split) and 20 ps NVE from 300 K, all
# trajectories of a model as one batch of replicas. Model by model (seed 0 of every kind first),
# each model's NVT run and then its NVE run, so drift and survival arrive together; each
# (model, protocol) run is reused when finished and a killed one resumes from its saved state, so
# the script can be started again at any time. The report of all finished runs is rewritten after
# each run.
#
#   bash benchmarks/converged_md.sh            # from the checkout, after benchmarks/rmd17.py --suite converged
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/md_converged
RUNS=runs/benchmarks
MD=(python benchmarks/md_stability.py --batched --trajectories 8 --out "$OUT" --no-progress)
models() {  # seed by seed: the aspirin EF_100 models, the energy-only Δ models, the MP2/CBS Δ model
  for s in 0 1 2; do
    for m in painn32_conservative-EF_100-plain painn32_conservative-EF_100-piwsl_2nd \
             painn32_direct-EF_100-plain painn32_direct-EF_100-piwsl_2nd \
             painn32_conservative-E_only_1000-delta painn32_conservative-E_only_1000-delta_piwsl_2nd; do
      [ -f "$RUNS/aspirin-$m-s$s/best_model.pt" ] && echo "$RUNS/aspirin-$m-s$s/best_model.pt"
    done
    f="runs/mp2cbs/N300_delta_ft_plain_s$s/best_model.pt"
    [ -f "$f" ] && echo "$f::builtin:ethanol_test"
  done
  return 0
}
mapfile -t ALL < <(models)
for model in "${ALL[@]}"; do
  for protocol in nvt300 nve300; do
    "${MD[@]}" "$model" --protocols "$protocol"
    "${MD[@]}" --summary-only "${ALL[@]}" --protocols nvt300 nve300  # the report so far
  done
done
