#!/usr/bin/env bash
# Prepares benchmarks/converged_device.sh (issue #15) for a lent GPU machine, in folders git ignores:
# .gpu/ (the two molecules' rMD17 files, the MD models given — default: the aspirin E+F N=100
# models of converged_md.sh whose MD has not run here —, the commit) and .whl/ (the wheels of the
# packages that machine lacks, for its Python 3.12). Commit first: the results record .gpu/COMMIT.
#
#   bash benchmarks/converged_device_prepare.sh [RUN_NAME ...]   # "none": no MD models
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.gpu/ /.whl/; do grep -qx "$d" .git/info/exclude || echo "$d" >>.git/info/exclude; done
rm -rf .gpu && mkdir -p .gpu/rmd17 .gpu/runs/benchmarks
for m in aspirin ethanol; do cp ../shared/data/rmd17/rmd17_"$m"_{train,test}_01.npz .gpu/rmd17/; done
if (($# == 0)); then
  for s in 1 2; do
    for m in painn32_conservative-EF_100-plain painn32_conservative-EF_100-piwsl_2nd \
             painn32_direct-EF_100-plain painn32_direct-EF_100-piwsl_2nd; do
      done_file=benchmarks/results/md_converged/md_stability/aspirin-$m-s$s/nvt300/benchmark_run.json
      [ -f "$done_file" ] || set -- "$@" "aspirin-$m-s$s"
    done
  done
fi
for name in "$@"; do
  [ "$name" = none ] && continue
  mkdir -p ".gpu/runs/benchmarks/$name"
  cp "runs/benchmarks/$name/best_model.pt" ".gpu/runs/benchmarks/$name/"
done
git rev-parse HEAD >.gpu/COMMIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl ase==3.29.0 vesin==0.6.2 pydantic==2.14.4 \
  pydantic_core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0 typing_extensions==4.16.0
du -sh .gpu .whl
