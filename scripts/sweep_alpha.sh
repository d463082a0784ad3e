#!/usr/bin/env bash
# HAM's alpha and beta for the Fashion-MNIST experiments, chosen on a VALIDATION split (never on test).
#
#   scripts/sweep_alpha.sh                     # the sweep (52 runs, under 30 min on 2 cores), then the ranking
#   scripts/sweep_alpha.sh --rank-only DIR     # only rank an existing sweep dir
#
# What it runs (configs/experiment/fmnist_sparse.yaml's recipe and run length, dataset.eval_split=val:
# 54,000 training images, 6,000 held out with a fixed split seed; the test split is never read):
#   HAM on : dense and Random PaI at s = 0.9 (the paper's sign-flip setting), alpha x beta grid, 2 seeds
#   HAM off: the same two, 2 seeds (reference: does HAM help on validation at all?)
# = 2 x |ALPHAS| x |BETAS| x 2 + 4 runs (52 with the default grid), with the joblib launcher.
#
# Selection rule (fixed before looking; scripts/rank_ham_sweep.py applies it): the (alpha, beta) with the
# highest validation accuracy after the last epoch, averaged over both settings and both seeds; a pair with
# any failed (diverged) run is out. The ranking goes to results/alpha_beta_sweep/ranking.md next to
# make_tables' tables. Then put the chosen
# pair into the marked `ham:` keys of configs/experiment/fmnist_dense.yaml AND fmnist_sparse.yaml,
# commit the sweep's results, and only then run the final (test-split) sweeps of docs/reproduce.md.
#
# Environment overrides: ALPHAS, BETAS, SEEDS (comma lists), SWEEP (sweep dir), OUT (results dir),
# N_JOBS (parallel runs, default 2), BENCH (the ham-bench command). Extra arguments go to ham-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

ALPHAS=${ALPHAS:-1,5,20,50}
BETAS=${BETAS:-0,1e-3,1e-2}
SEEDS=${SEEDS:-0,1}
N_JOBS=${N_JOBS:-2}
SWEEP=${SWEEP:-multirun/alpha_sweep/$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-results/alpha_beta_sweep}
BENCH=${BENCH:-.venv/bin/ham-bench}
PYTHON=${PYTHON:-.venv/bin/python}

rank() {
    "$PYTHON" scripts/rank_ham_sweep.py "$1" --out "$OUT"
}

if [ "${1:-}" = "--rank-only" ]; then
    rank "${2:?usage: scripts/sweep_alpha.sh --rank-only SWEEP_DIR}"
    exit 0
fi

common=(experiment=fmnist_sparse dataset.eval_split=val hydra/launcher=local_parallel
        "hydra.launcher.n_jobs=$N_JOBS" "hydra.sweep.dir=$SWEEP" progress=false)
# HAM on: the grid. sparsifier=random runs at its config's default s = 0.9.
"$BENCH" -m "${common[@]}" sparsifier=dense,random ham=hyp_star "ham.alpha=$ALPHAS" "ham.beta=$BETAS" \
    "seed=$SEEDS" "$@"
# HAM off: the reference, into the same sweep dir (job names differ by their overrides).
"$BENCH" -m "${common[@]}" sparsifier=dense,random ham=off "seed=$SEEDS" "$@"
rank "$SWEEP"
echo "sweep: $SWEEP  ranking: $OUT/ranking.md"
