#!/usr/bin/env bash
# Regenerates every CPU benchmark table and the benchmark page, docs/benchmarks.md:
#   bash benchmarks/run_all.sh            (about 40 minutes on 2 CPU cores)
#   bash benchmarks/run_all.sh --quick    (smoke run: minutes, numbers not meaningful)
# Needs the bench extra: pip install -e ".[bench]". Run it on an otherwise idle machine: the
# speed figures are ratios measured in one run, but a busy machine makes them noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
[ "${1:-}" = "--quick" ] && quick=(--quick)

python benchmarks/train_step.py "${quick[@]}"
python benchmarks/sampling.py "${quick[@]}"
python benchmarks/toy_nll.py "${quick[@]}"
python benchmarks/digits_bpd.py "${quick[@]}"
python benchmarks/log_prob.py "${quick[@]}"
python benchmarks/collect.py
