#!/usr/bin/env bash
# The Fashion-MNIST sparse table: every method of the taxonomy alone and +HAM (Sign-In compositions and
# PILoT alone), at s = 0.8 / 0.9 / 0.95, 3 seeds, plus one N:M 2:4 column; then the tables and plots.
#
#   scripts/sweep_fmnist_sparse.sh             # all sweeps into one dir, then make_tables + plots
#   scripts/sweep_fmnist_sparse.sh --tables DIR  # only the tables and plots of an existing sweep dir
#
# The recipe is configs/experiment/fmnist_sparse.yaml (3 epochs, SGD, cosine, HAM alpha 20 / beta 0 from the
# validation sweep); each method runs with its own config's defaults. Runs (x 3 seeds):
#   random, acdc, rigl, str, snip, synflow, gmp, imp, lrr, set, mest, cs, spred: alone and +HAM x 3 sparsities
#   signin, acdc_signin, rigl_signin, pilot: alone x 3 sparsities;  nm (2:4): alone and +HAM
# = 13 x 2 x 3 x 3 + 4 x 3 x 3 + 2 x 3 = 276 runs; about 28 s each with 2 runs at a time here.
# Environment: SWEEP (sweep dir), OUT (results dir), N_JOBS (default 2), BENCH (the ham-bench command),
# PYTHON; extra arguments go to every ham-bench call.
set -euo pipefail
cd "$(dirname "$0")/.."

N_JOBS=${N_JOBS:-2}
SWEEP=${SWEEP:-multirun/fmnist_sparse/$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-results/fmnist_sparse}
BENCH=${BENCH:-.venv/bin/ham-bench}
PYTHON=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-0,1,2}

tables() {
    "$PYTHON" scripts/make_tables.py "$1" --paper imagenet_sparse --out "$OUT"
    "$PYTHON" scripts/plot_sign_flips.py "$1" --out "$OUT"
}

if [ "${1:-}" = "--tables" ]; then
    tables "${2:?usage: scripts/sweep_fmnist_sparse.sh --tables SWEEP_DIR}"
    exit 0
fi

common=(experiment=fmnist_sparse hydra/launcher=local_parallel "hydra.launcher.n_jobs=$N_JOBS"
        "hydra.sweep.dir=$SWEEP" progress=false "seed=$SEEDS")
"$BENCH" -m "${common[@]}" sparsifier=random,acdc,rigl,str,snip,synflow,gmp,imp,lrr,set,mest,cs,spred \
    sparsifier.sparsity=0.8,0.9,0.95 ham=off,hyp_star "$@"
"$BENCH" -m "${common[@]}" sparsifier=signin,acdc_signin,rigl_signin,pilot sparsifier.sparsity=0.8,0.9,0.95 \
    ham=off "$@"
"$BENCH" -m "${common[@]}" sparsifier=nm ham=off,hyp_star "$@"
tables "$SWEEP"
