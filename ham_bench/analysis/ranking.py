"""HAM's (alpha, beta) choice on a validation sweep: the ranking and the chosen pair.

The runs are those of ``scripts/sweep_alpha.sh`` (dense and Random PaI, HAM on over an
alpha x beta grid and HAM off, several seeds, ``dataset.eval_split=val``).

The selection rule, fixed before the sweep ran: the pair with the highest
validation accuracy after the last epoch, averaged over every run of the pair
(both settings, all seeds); a pair with any run that did not complete
(diverged, killed) is out. Ties go to the smaller alpha, then the smaller
beta. A sweep that has any run evaluated on the test split is refused: the
choice must not see the test split.
"""

from __future__ import annotations

from pathlib import Path

from ham_bench.analysis.runs import Run, mean_std

SETTINGS = ("dense", "random")  # the runs' base methods, one column each


def _accuracy(runs: list[Run]) -> float | None:
    return mean_std([run.summary["final_test_acc"] for run in runs])[0]


def rank(runs: list[Run]) -> tuple[list[dict], float | None]:
    """One entry per (alpha, beta), best first; entries with a failed run last, unranked. Plus HAM off's mean."""
    if any(run.eval_split != "val" for run in runs):
        raise SystemExit("error: the sweep has runs evaluated on the test split; the choice must use "
                         "dataset.eval_split=val")
    pairs: dict[tuple[float, float], list[Run]] = {}
    for run in runs:
        if run.ham != "off":
            pairs.setdefault((float(run.flat["ham.alpha"]), float(run.flat["ham.beta"])), []).append(run)
    entries = []
    for (alpha, beta), members in pairs.items():
        done = [run for run in members if run.status == "completed"]
        entries.append({"alpha": alpha, "beta": beta, "runs": len(done), "not_completed": len(members) - len(done),
                        "score": _accuracy(done) if len(done) == len(members) else None,
                        **{base: _accuracy([run for run in done if run.base == base]) for base in SETTINGS}})
    entries.sort(key=lambda e: (e["score"] is None, -(e["score"] or 0.0), e["alpha"], e["beta"]))
    off = [run for run in runs if run.ham == "off" and run.status == "completed"]
    return entries, _accuracy(off)


def off_rank(entries: list[dict], off: float | None) -> int | None:
    """Where HAM off would rank among the ranked pairs (1 = above all of them)."""
    if off is None:
        return None
    return 1 + sum(e["score"] is not None and e["score"] > off for e in entries)


def ranking_readings(entries: list[dict], off: float | None) -> dict:
    """The figures a reading of the ranking quotes (readings.json, key ``ranking``)."""
    ranked = [e for e in entries if e["score"] is not None]
    scores = [e["score"] for e in ranked]
    return {"pairs": entries, "ranked": len(ranked), "ham_off": off, "ham_off_rank": off_rank(entries, off),
            "of": len(ranked) + (off is not None),
            "score_range": max(scores) - min(scores) if scores else None,
            "chosen": ranked[0] if ranked else None,
            "margin_over_runner_up": scores[0] - scores[1] if len(scores) > 1 else None}


def render(sweep: Path, entries: list[dict], off: float | None) -> str:
    cell = lambda value: "—" if value is None else f"{value:.2f}"  # noqa: E731
    lines = ["# HAM alpha/beta on the Fashion-MNIST validation split", "",
             f"Sweep: {sweep}. Validation accuracy after the last epoch (%), mean over dense and Random PaI "
             "s=0.9 and the seeds; a pair with any run that did not complete is not ranked.", "",
             "| rank | alpha | beta | mean val acc | dense | Random s=0.9 | runs | not completed |",
             "|---|---|---|---|---|---|---|---|"]
    for index, e in enumerate(entries, 1):
        lines.append(f"| {index if e['score'] is not None else '—'} | {e['alpha']:g} | {e['beta']:g} | "
                     f"{cell(e['score'])} | {cell(e['dense'])} | {cell(e['random'])} | {e['runs']} | "
                     f"{e['not_completed']} |")
    lines += ["", f"HAM off (same settings and seeds): {cell(off)} % mean val acc."]
    rank_of_off = off_rank(entries, off)
    if rank_of_off is not None:
        ranked = sum(e["score"] is not None for e in entries)
        lines[-1] += f" Ranked with the pairs it would be {rank_of_off} of {ranked + 1}."
    if entries and entries[0]["score"] is not None:
        lines += ["", f"Chosen: alpha = {entries[0]['alpha']:g}, beta = {entries[0]['beta']:g}. Put them into the "
                  "`ham:` keys of configs/experiment/fmnist_dense.yaml and fmnist_sparse.yaml."]
    else:
        lines += ["", "No pair completed every run: nothing is chosen."]
    return "\n".join(lines) + "\n"
