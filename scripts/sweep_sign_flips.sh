#!/usr/bin/env bash
# The sign-flip study (the HAM paper's Fig. 2a question): sign flips per epoch against HAM's alpha for
# dense, Random PaI, AC/DC and RigL at s = 0.9, at two run lengths; then the study's tables and plot.
#
#   scripts/sweep_sign_flips.sh                  # both sweeps, then the summary
#   scripts/sweep_sign_flips.sh --tables DIR     # only the summary of an existing sweep dir
#
# Recipe: configs/experiment/fmnist_sparse.yaml (SGD lr 0.05, cosine, batch 128) with HAM beta = 0, so
# alpha alone varies; "alpha ~ 0" is HAM off (HAM with alpha = beta = 0 is the base step itself).
#   3 epochs:  alpha in {off, 20, 50, 100, 200} x 4 families x 3 seeds = 60 runs (~30 min here)
#   15 epochs: alpha in {off, 20, 200} x 4 families x 2 seeds = 24 runs (~65 min here)
# Environment: SWEEP, OUT, N_JOBS (default 2), BENCH, PYTHON, LONG_SEEDS / LONG_ALPHAS (the 15-epoch
# runs' seeds and alphas, default 0,1 and 20,200); extra arguments go to every ham-bench call.
set -euo pipefail
cd "$(dirname "$0")/.."

N_JOBS=${N_JOBS:-2}
SWEEP=${SWEEP:-multirun/sign_flips/$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-results/sign_flips}
BENCH=${BENCH:-.venv/bin/ham-bench}
PYTHON=${PYTHON:-.venv/bin/python}

summarize() {
    "$PYTHON" scripts/sign_flip_study.py "$1" --out "$OUT"
}

if [ "${1:-}" = "--tables" ]; then
    summarize "${2:?usage: scripts/sweep_sign_flips.sh --tables SWEEP_DIR}"
    exit 0
fi

common=(experiment=fmnist_sparse hydra/launcher=local_parallel "hydra.launcher.n_jobs=$N_JOBS" progress=false
        ham.beta=0.0)
sparse=(sparsifier=random,acdc,rigl sparsifier.sparsity=0.9)   # dense refuses a sparsity key: its own sweeps
for length in "3 0,1,2 20,50,100,200" "15 ${LONG_SEEDS:-0,1} ${LONG_ALPHAS:-20,200}"; do
    read -r epochs seeds alphas <<< "$length"
    dir="$SWEEP/epochs_$epochs"
    "$BENCH" -m "${common[@]}" "hydra.sweep.dir=$dir/dense" "epochs=$epochs" "seed=$seeds" sparsifier=dense ham=off "$@"
    "$BENCH" -m "${common[@]}" "hydra.sweep.dir=$dir/dense_ham" "epochs=$epochs" "seed=$seeds" sparsifier=dense \
        ham=hyp_star "ham.alpha=$alphas" "$@"
    "$BENCH" -m "${common[@]}" "hydra.sweep.dir=$dir/sparse" "epochs=$epochs" "seed=$seeds" "${sparse[@]}" ham=off "$@"
    "$BENCH" -m "${common[@]}" "hydra.sweep.dir=$dir/sparse_ham" "epochs=$epochs" "seed=$seeds" "${sparse[@]}" \
        ham=hyp_star "ham.alpha=$alphas" "$@"
done
summarize "$SWEEP"
