"""+HAM minus the method alone, per cell: the gain, its effect size and a test over seeds.

What a small-scale table can be compared with is the paper's *gain* from adding HAM (its +HAM row
minus the method's row, same column), not its accuracy level: ours are another dataset, model
and run length. For every cell that has both rows (same config but HAM; dense: HAM - baseline):

- gain: difference of the two cells' seed means, in points;
- pooled std: the two cells' sample stds pooled (ddof = 1), and gain / pooled std, an effect
  size (Cohen's d). It says how large the gain is against the seed noise; it is not a test;
- p: two-sided paired t-test over the seeds both cells completed (``scipy.stats.ttest_rel``:
  a method and its +HAM run share the seed, hence the mask, the init and the data order) when
  at least MIN_PAIRS seeds pair; otherwise Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``)
  when both cells have 2 seeds or more. With 2 pairs the paired test has one degree of freedom and
  returns p ~ 0 whenever the two differences happen to agree; no test is made on samples without
  spread (identical differences, or cells whose seeds all agree);
- p (Holm): Holm's step-down correction over all the tested cells of the table, so that a
  "significant" cell keeps the family-wise error rate at ALPHA however many cells there are;
- paper: the published gain for the same row and column, when ``--paper`` is given.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import dataclass

from scipy import stats

from ham_bench.analysis.runs import Group
from ham_bench.analysis.tables import Table, column_name, column_of, markdown

ALPHA = 0.05
MIN_PAIRS = 3


@dataclass
class Pair:
    on: Group                      # the +HAM cell
    off: Group                     # the method alone
    column: object
    metric: str
    gain: float | None
    pooled_std: float | None
    test: str                      # "paired t (n=3)", "Welch t", or "" (too few seeds)
    p: float | None
    p_holm: float | None = None
    paper_gain: float | None = None

    @property
    def effect(self) -> float | None:
        if self.gain is None or not self.pooled_std:
            return None
        return self.gain / self.pooled_std


def _key(group: Group) -> tuple:
    """A group's config without HAM: the +HAM cell and the method's cell share it."""
    run = group.first
    rest = {k: json.dumps(v, sort_keys=True, default=str) for k, v in run.flat.items() if not k.startswith("ham.")}
    return run.base, run.signin, tuple(sorted(rest.items()))


def _by_seed(group: Group, metric: str) -> dict:
    values = {}
    for run in group.used:
        value = run.summary.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            values[run.seed] = float(value)
    return values


def _spread(values: list[float]) -> bool:
    """Whether the values differ by more than float rounding."""
    return max(values) - min(values) > 1e-9 * max(1.0, max(abs(v) for v in values))


def compare(on: Group, off: Group, column, metric: str) -> Pair:
    """The gain of ``on`` over ``off``, its pooled std and the test over seeds."""
    a, b = _by_seed(off, metric), _by_seed(on, metric)
    gain = statistics.fmean(b.values()) - statistics.fmean(a.values()) if a and b else None
    pooled = None
    if len(a) + len(b) > 2 and a and b:
        spread = sum((len(v) - 1) * statistics.variance(v.values()) for v in (a, b) if len(v) > 1)
        pooled = math.sqrt(spread / (len(a) + len(b) - 2))
    common = sorted(set(a) & set(b), key=str)
    differences = [b[s] - a[s] for s in common]
    test, p = "", None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical samples: scipy warns, p is nan
        if len(common) >= MIN_PAIRS:
            if _spread(differences):
                test = f"paired t (n={len(common)})"
                p = stats.ttest_rel([b[s] for s in common], [a[s] for s in common]).pvalue
        elif len(a) >= 2 and len(b) >= 2 and (_spread(list(a.values())) or _spread(list(b.values()))):
            test, p = "Welch t", stats.ttest_ind(list(b.values()), list(a.values()), equal_var=False).pvalue
    p = float(p) if p is not None and math.isfinite(p) else None
    return Pair(on=on, off=off, column=column, metric=metric, gain=gain, pooled_std=pooled,
                test=test if p is not None else "", p=p)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def pairs_of(groups: list[Group], metric: str, column) -> list[Pair]:
    """Every +HAM group paired with the group of the same config without HAM; ``column(run)`` names the cell."""
    alone = {_key(g): g for g in groups if g.first.ham == "off" and g.used}
    return [compare(g, alone[_key(g)], column(g.first), metric)
            for g in groups if g.first.ham != "off" and g.used and _key(g) in alone]


def ham_pairs(table: Table) -> list[Pair]:
    """Every cell of the table with a +HAM row and the method's own row, in the table's order."""
    pairs = pairs_of(table.groups, table.metric, lambda run: column_of(table, run))
    pairs.sort(key=lambda p: (table.rows.index(p.on.label), table.columns.index(p.column)))
    tested = [p for p in pairs if p.p is not None]
    for pair, adjusted in zip(tested, holm([p.p for p in tested])):
        pair.p_holm = adjusted
    for pair in pairs:
        published = table.paper or {}
        on, off = (published.get(g.label, {}).get(pair.column) for g in (pair.on, pair.off))
        if on and off:
            pair.paper_gain = on[0] - off[0]
    return pairs


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _p(value: float | None) -> str:
    return "" if value is None else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def paired_rows(table: Table, pairs: list[Pair]) -> tuple[list[str], list[list[str]]]:
    header = ["+HAM row", "vs", "column", "seeds (+HAM / alone)", "gain", "pooled std", "gain / pooled std",
              "test", "p", "p (Holm)", f"significant (Holm, {ALPHA:g})"]
    if table.paper:
        header.append("paper's gain")
    lines = []
    for pair in pairs:
        line = [pair.on.label, pair.off.label, column_name(table, pair.column),
                f"{len(pair.on.used)} / {len(pair.off.used)}", _num(pair.gain, "+.2f"), _num(pair.pooled_std, ".2f"),
                _num(pair.effect, "+.1f"), pair.test, _p(pair.p), _p(pair.p_holm),
                "" if pair.p_holm is None else ("yes" if pair.p_holm < ALPHA else "no")]
        if table.paper:
            line.append(_num(pair.paper_gain, "+.2f"))
        lines.append(line)
    return header, lines


def render_paired(table: Table, pairs: list[Pair]) -> str:
    tested = sum(pair.p is not None for pair in pairs)
    caption = (f"gain: +HAM cell mean minus the method's cell mean (points). gain / pooled std is an effect "
               "size (Cohen's d over the two cells' seeds), not a test. p: two-sided paired t-test over the seeds "
               f"both cells completed (Welch's t-test where fewer than {MIN_PAIRS} seeds pair; none where the "
               "values have no spread). p (Holm): Holm's correction "
               f"over the {tested} tested cells of this table; significant: p (Holm) < {ALPHA:g}.")
    if table.paper:
        caption += " paper's gain: the published +HAM row minus the published method row, same column."
    return "\n".join([f"### {table.title.split(':')[0]}: +HAM minus the method alone", "", caption, "",
                      markdown(*paired_rows(table, pairs)), ""])
