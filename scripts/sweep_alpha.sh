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
# Selection rule (fixed before looking): the (alpha, beta) with the highest validation accuracy after the
# last epoch, averaged over both settings and both seeds; a pair with any failed (diverged) run is out.
# The ranking goes to results/alpha_sweep/ranking.md next to make_tables' tables. Then put the chosen
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
OUT=${OUT:-results/alpha_sweep}
BENCH=${BENCH:-.venv/bin/ham-bench}
PYTHON=${PYTHON:-.venv/bin/python}

rank() {
    "$PYTHON" - "$1" "$OUT" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "scripts")
from make_tables import collect_runs, group_runs, make_tables, mean_std

sweep, out = Path(sys.argv[1]), Path(sys.argv[2])
make_tables([sweep], out=out)  # every group, and every run that did not complete, in tables.md
runs = collect_runs([sweep])
if any(run.eval_split != "val" for run in runs):
    raise SystemExit("error: this sweep has runs evaluated on the test split; the choice must use val")
pairs, baseline = {}, []
for run in runs:
    if run.ham == "off":
        if run.status == "completed":
            baseline.append(run.summary["final_test_acc"])
        continue
    key = (float(run.config["ham"]["alpha"]), float(run.config["ham"]["beta"]))
    pairs.setdefault(key, []).append(run)
lines = ["# HAM alpha/beta on the Fashion-MNIST validation split", "",
         f"Sweep: {sweep}. Validation accuracy after the last epoch (%), mean over dense and Random PaI "
         "s=0.9 and the seeds; a pair with any run that did not complete is excluded.", "",
         "| rank | alpha | beta | mean val acc | dense | Random s=0.9 | runs | not completed |", "|---|---|---|---|---|---|---|---|"]
scored = []
for (alpha, beta), members in pairs.items():
    done = [r for r in members if r.status == "completed"]
    bad = [r for r in members if r.status != "completed"]
    per_base = {base: mean_std([r.summary["final_test_acc"] for r in done if r.base == base])[0]
                for base in ("dense", "random")}
    score = mean_std([r.summary["final_test_acc"] for r in done])[0] if not bad else None
    scored.append((score if score is not None else float("-inf"), alpha, beta, per_base, len(done), len(bad)))
scored.sort(key=lambda item: (-item[0], item[1], item[2]))
for index, (score, alpha, beta, per_base, n, n_bad) in enumerate(scored, 1):
    cell = lambda value: "—" if value is None else f"{value:.2f}"  # noqa: E731
    lines.append(f"| {index if n_bad == 0 else '—'} | {alpha:g} | {beta:g} | "
                 f"{cell(score if n_bad == 0 else None)} | {cell(per_base['dense'])} | {cell(per_base['random'])} | "
                 f"{n} | {n_bad} |")
reference = mean_std(baseline)[0]
lines += ["", f"HAM off (same settings and seeds): {'—' if reference is None else f'{reference:.2f}'} % mean val acc."]
if scored and scored[0][0] != float("-inf"):
    _, alpha, beta, *_ = scored[0]
    lines += ["", f"Chosen: alpha = {alpha:g}, beta = {beta:g}. Put them into the `ham:` keys of "
              "configs/experiment/fmnist_dense.yaml and fmnist_sparse.yaml."]
out.mkdir(parents=True, exist_ok=True)
(out / "ranking.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
}

if [ "${1:-}" = "--rank-only" ]; then
    rank "${2:?usage: scripts/sweep_alpha.sh --rank-only SWEEP_DIR}"
    exit 0
fi

common=(+experiment=fmnist_sparse dataset.eval_split=val hydra/launcher=local_parallel
        "hydra.launcher.n_jobs=$N_JOBS" "hydra.sweep.dir=$SWEEP" progress=false)
# HAM on: the grid. sparsifier=random runs at its config's default s = 0.9.
"$BENCH" -m "${common[@]}" sparsifier=dense,random ham=hyp_star "ham.alpha=$ALPHAS" "ham.beta=$BETAS" \
    "seed=$SEEDS" "$@"
# HAM off: the reference, into the same sweep dir (job names differ by their overrides).
"$BENCH" -m "${common[@]}" sparsifier=dense,random ham=off "seed=$SEEDS" "$@"
rank "$SWEEP"
echo "sweep: $SWEEP  ranking: $OUT/ranking.md"
