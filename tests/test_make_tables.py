"""make_tables (ham_bench.analysis, scripts/make_tables.py) on a synthetic sweep made of a REAL run's files.

One short real run (Fashion-MNIST subset, Random PaI at s=0.9, 2 epochs) provides a real run dir
(summary.json, metrics.jsonl, .hydra/). The sweep is copies of it: each copy gets the config a
real run of that row would have stored (composed with the Hydra compose API) and known
accuracies, so the expected means and stds are known exactly. Some copies fail, stop, or lose
their summary.json (a killed run); they must be listed and flagged, not dropped.
"""

import csv
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from scipy import stats as scipy_stats

from ham_bench.analysis.runs import collect_runs, group_runs, mean_std
from ham_bench.analysis.paired import ham_pairs, holm
from ham_bench.analysis.paper import format_paper
from ham_bench.analysis.report import make_tables
from ham_bench.analysis.tables import build_tables, format_cell
from sweep_fixtures import (PLUGIN, RANDOM, RANDOM_HAM, REPO, SIGNIN, hydra_dirname, make_variant, real_run_dir,
                            run_script, tables_sweep)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two sweep dirs, as two multirun commands would leave them."""
    return tables_sweep(real_run_dir(tmp_path_factory), tmp_path_factory.mktemp("sweeps"))


def by_label(table, label, column):
    return table.cells[(label, column)]


def test_groups_means_and_stds(sweep):
    runs = collect_runs(list(sweep))
    assert len(runs) == 15
    tables = {t.name: t for t in build_tables(runs)}
    sparse, dense = tables["sparse"], tables["dense"]

    random_09 = by_label(sparse, "Random", 0.9)
    assert [r.seed for r in random_09.used] == [0, 1, 2]
    assert mean_std(random_09.values("final_test_acc")) == pytest.approx((82.0, 2.0))
    assert format_cell(random_09, "final_test_acc") == "82.00 ± 2.00 (3)"

    ham = by_label(sparse, "Random+HAM", 0.9)
    assert len(ham.runs) == 3 and [r.seed for r in ham.used] == [0, 1]
    assert mean_std(ham.values("final_test_acc")) == pytest.approx((85.5, statistics.stdev([85, 86])))
    assert ham.flagged
    assert format_cell(ham, "final_test_acc") == "85.50 ± 0.71 (2)†"

    signin = by_label(sparse, "Random+Sign-In", 0.9)  # read from the composed config: signin over random
    assert format_cell(signin, "final_test_acc") == "83.67 ± 0.76 (3)"
    assert format_cell(by_label(sparse, "Random", 0.8), "final_test_acc") == "87.50 (1)†"
    assert format_cell(by_label(sparse, "RiGL", 0.9), "final_test_acc") == "— (0)†"
    assert sparse.rows == ["Random", "Random+Sign-In", "Random+HAM", "RiGL"]
    assert sparse.columns == [0.8, 0.9]

    assert dense.columns == ["2 ep", "+SAM 2 ep"]
    assert dense.rows == ["baseline", "HAM"]
    assert format_cell(by_label(dense, "baseline", "2 ep"), "final_test_acc") == "90.50 ± 0.71 (2)"
    assert format_cell(by_label(dense, "HAM", "+SAM 2 ep"), "final_test_acc") == "91.50 (1)"


def test_failed_stopped_and_killed_runs_are_listed(sweep):
    text = make_tables(list(sweep))
    problems = text.split("## Runs not in the means")[1]
    for name, status in [("5_random_ham", "failed"), ("7_random", "incomplete"), ("3_rigl", "stopped")]:
        line = next(line for line in problems.splitlines() if name in line)
        assert f"| {status} |" in line, line
    assert "no summary.json" in problems and "failed on purpose" in problems
    assert "0_random" not in problems


def test_markdown_csv_and_paper_column(sweep, tmp_path):
    out = tmp_path / "tables"
    result = run_script("make_tables", *map(str, sweep), "--out", str(out),
                        "--paper", "imagenet_sparse", "--paper", "imagenet_dense")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (out / "tables.md").read_text().strip()
    assert {p.name for p in out.iterdir()} == {"tables.md", "sparse.csv", "sparse_detail.csv", "dense.csv",
                                             "dense_detail.csv", "runs.csv", "sparse_paired.csv", "readings.json"}
    with open(out / "sparse.csv") as handle:
        wide = {row["method"]: row for row in csv.DictReader(handle)}
    assert wide["Random"]["s=0.9"] == "82.00 ± 2.00 (3)"
    # the published column sits beside ours; published rows we did not run stay, empty on our side
    with open(out / "sparse.csv") as handle:
        header = next(csv.reader(handle))
    assert header[:6] == ["family", "method", "s=0.8", "paper", "s=0.9", "paper"]
    assert wide["Random"]["s=0.95"] == "—"
    assert wide["AC/DC+HAM"]["s=0.9"] == "—" and wide["AC/DC+HAM"]["family"] == "DtS"
    with open(out / "sparse_detail.csv") as handle:
        detail = list(csv.DictReader(handle))
    random_09 = next(r for r in detail if r["method"] == "Random" and r["target sparsity"] == "0.9")
    assert (random_09["n"], random_09["seeds"], random_09["final_test_acc mean"], random_09["std"]) == (
        "3", "0 1 2", "82.00", "2.00")
    assert random_09["paper"] == "71.56 ± 0.03" and "ours - paper" not in random_09  # levels do not compare
    assert random_09["achieved sparsity"] == "0.9000"
    assert random_09["train_flops_fraction"] == "0.400" and random_09["inference_flops_fraction"] == "0.100"
    ham = next(r for r in detail if r["method"] == "Random+HAM")
    assert ham["not completed"] == "seed 2: failed" and ham["train_flops_fraction"] == ""
    with open(out / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == 15
    assert sorted(r["status"] for r in runs).count("completed") == 12
    markdown = (out / "tables.md").read_text()
    assert "| DtS | AC/DC+HAM |" in markdown and "76.66 ± 0.12" in markdown
    assert "| baseline |" in markdown and "76.72 ± 0.19" in markdown


def test_paired_table_gain_effect_size_and_holm_corrected_test(sweep, tmp_path):
    """+HAM - method per cell: the gain, the pooled-std ratio, a seed-paired t-test and Holm's correction."""
    out = tmp_path / "tables"
    make_tables(list(sweep), out, paper=["imagenet_sparse"])
    with open(out / "sparse_paired.csv") as handle:
        [row] = list(csv.DictReader(handle))  # the only cell with both rows: Random vs Random+HAM at 0.9
    pooled = ((2 * 2.0 ** 2 + 1 * statistics.variance([85.0, 86.0])) / 3) ** 0.5
    assert (row["+HAM row"], row["vs"], row["column"], row["seeds (+HAM / alone)"]) == ("Random+HAM", "Random",
                                                                                      "s=0.9", "2 / 3")
    assert row["gain"] == "+3.50" and row["pooled std"] == f"{pooled:.2f}" and row["gain / pooled std"] == \
        f"{3.5 / pooled:+.1f}"
    # only seeds 0 and 1 pair (too few for a paired test): Welch's test on the two cells
    welch = scipy_stats.ttest_ind([85.0, 86.0], [80.0, 82.0, 84.0], equal_var=False).pvalue
    assert row["test"] == "Welch t" and row["p"] == f"{welch:.3f}" == row["p (Holm)"]
    assert row["significant (Holm, 0.05)"] == "no" and row["paper's gain"] == "+1.16"
    text = (out / "tables.md").read_text()
    assert "is an effect size (Cohen's d over the two cells' seeds), not a test" in text
    assert "Holm's correction over the 1 tested cells of this table" in text
    assert not (out / "dense_paired.csv").exists()  # baseline (SGD) and HAM (SAM) are not one config


def _pair_of(source, root, alone: dict, with_ham: dict):
    for seed, acc in alone.items():
        make_variant(source, root / f"off{seed}", ["sparsifier=random", "ham=off"], seed, acc)
    for seed, acc in with_ham.items():
        make_variant(source, root / f"on{seed}", RANDOM_HAM, seed, acc)
    [table] = build_tables(collect_runs([root]))
    [pair] = ham_pairs(table)
    return pair


def test_holm_correction_and_the_tests_over_seeds(sweep, tmp_path):
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.2]) == pytest.approx([0.5, 0.4])
    source = sweep[0] / "0_random"
    paired = _pair_of(source, tmp_path / "paired", {0: 80.0, 1: 81.0, 2: 83.0}, {0: 81.0, 1: 81.5, 2: 84.5})
    assert paired.test == "paired t (n=3)" and paired.gain == pytest.approx(1.0)
    assert paired.p == pytest.approx(scipy_stats.ttest_rel([81.0, 81.5, 84.5], [80.0, 81.0, 83.0]).pvalue)
    welch = _pair_of(source, tmp_path / "welch", {0: 80.0, 1: 81.0}, {2: 83.0, 3: 85.0})  # no seed in common
    assert welch.test == "Welch t" and welch.gain == pytest.approx(3.5)
    assert welch.p == pytest.approx(scipy_stats.ttest_ind([83.0, 85.0], [80.0, 81.0], equal_var=False).pvalue)
    # the same gain on every seed: no spread, no test (a paired t-test would say p = 0)
    flat = _pair_of(source, tmp_path / "flat", {0: 80.0, 1: 81.0, 2: 82.0}, {0: 80.5, 1: 81.5, 2: 82.5})
    assert (flat.test, flat.p, flat.p_holm) == ("", None, None) and flat.gain == pytest.approx(0.5)


def test_readings_hold_the_figures_a_reading_quotes(sweep, tmp_path):
    make_tables(list(sweep), tmp_path, paper=["imagenet_sparse"])
    numbers = json.loads((tmp_path / "readings.json").read_text())
    assert (numbers["runs"], numbers["completed"], numbers["generated_by"]) == (15, 12, "scripts/make_tables.py")
    sparse = numbers["tables"]["sparse"]
    assert sparse["seed_std"] == {"min": pytest.approx(0.707107), "median": pytest.approx(0.763763), "max": 2.0,
                                  "cells": 3}
    # seconds = 60 + 10 * seed for the 9 completed sparse runs
    assert sparse["seconds_per_run"] == {"min": 60.0, "median": 70.0, "max": 80.0, "sum": 610.0}
    [pair] = sparse["paired"]
    assert (pair["row"], pair["vs"], pair["column"], pair["gain"], pair["test"]) == (
        "Random+HAM", "Random", "s=0.9", 3.5, "Welch t")
    assert pair["paper_gain"] == pytest.approx(1.16) and pair["significant"] is False
    assert pair["sign_flips_change_percent"] == 200.0  # 3x the flips, every epoch
    assert pair["sign_flips_change_percent_per_epoch"] == [200.0, 200.0]
    random = next(c for c in sparse["cells_detail"] if c["row"] == "Random" and c["column"] == "s=0.9")
    assert random["sign_flips_per_epoch"] == [500.0, 100.0] and random["seeds"] == [0, 1, 2]
    assert sparse["rank"]["s=0.9"] == ["Random+HAM", "Random+Sign-In", "Random"]
    assert sparse["paired_summary"]["significant_after_holm"] == 0 and sparse["paired_summary"]["tested"] == 1


def _hydra_sweep(source: Path, root: Path) -> Path:
    """Random alone and +HAM at two alphas, in job dirs named as Hydra's multirun names them."""
    cases = [(RANDOM + ["ham=off"], 0, 80.0), (RANDOM + ["ham=off"], 1, 81.0)]
    cases += [(RANDOM_HAM + [f"ham.alpha={alpha}"], seed, acc)
              for alpha, accs in ((5, (81.0, 81.4)), (20, (82.0, 82.9))) for seed, acc in enumerate(accs)]
    for index, (overrides, seed, acc) in enumerate(cases):
        overrides = [*overrides, "sparsifier.sparsity=0.9"]
        make_variant(source, root / hydra_dirname(index, overrides, seed), overrides, seed, acc)
    return root


def test_tables_rebuilt_from_runs_csv_equal_the_originals(sweep, tmp_path):
    runs_dir = _hydra_sweep(sweep[0] / "0_random", tmp_path / "multirun")
    make_tables([runs_dir], tmp_path / "dirs", paper=["imagenet_sparse"])
    result = run_script("make_tables", "--from-csv", str(tmp_path / "dirs" / "runs.csv"), "--out",
                        str(tmp_path / "csv"), "--paper", "imagenet_sparse")
    assert result.returncode == 0, result.stderr
    for name in ("runs.csv", "sparse.csv", "sparse_detail.csv", "sparse_paired.csv"):
        assert (tmp_path / "csv" / name).read_text() == (tmp_path / "dirs" / name).read_text(), name
    with open(tmp_path / "csv" / "sparse_paired.csv") as handle:
        assert [row["+HAM row"] for row in csv.DictReader(handle)] == ["Random+HAM [ham.alpha=5]",
                                                                      "Random+HAM [ham.alpha=20]"]
    rebuilt, original = (json.loads((tmp_path / d / "readings.json").read_text()) for d in ("csv", "dirs"))
    for numbers in (rebuilt, original):
        numbers.pop("source")
        for cell in numbers["tables"]["sparse"]["cells_detail"]:
            cell.pop("sign_flips_per_epoch", None)  # per-epoch rows need metrics.jsonl
        for pair in numbers["tables"]["sparse"]["paired"]:
            pair.pop("sign_flips_change_percent_per_epoch", None)
    assert rebuilt == original
    text = (tmp_path / "csv" / "tables.md").read_text()
    assert "(rebuilt from runs.csv)" in text and "Rebuilt from make_tables' runs.csv" in text


def test_tables_from_two_runs_csv_files_equal_the_tables_of_all_their_runs(sweep, tmp_path):
    """An earlier table's runs.csv plus the runs.csv of its new rows: the tables of all the runs at once."""
    runs_dir = _hydra_sweep(sweep[0] / "0_random", tmp_path / "multirun")
    make_tables([runs_dir], tmp_path / "dirs", paper=["imagenet_sparse"])
    header, *lines = (tmp_path / "dirs" / "runs.csv").read_text().splitlines(keepends=True)
    parts = [tmp_path / "earlier.csv", tmp_path / "new.csv"]
    parts[0].write_text(header + "".join(line for line in lines if "ham=off" in line))
    parts[1].write_text(header + "".join(line for line in lines if "ham=off" not in line))
    assert parts[0].read_text() != header and parts[1].read_text() != header
    result = run_script("make_tables", "--from-csv", str(parts[0]), "--from-csv", str(parts[1]), "--out",
                        str(tmp_path / "both"), "--paper", "imagenet_sparse")
    assert result.returncode == 0, result.stderr
    single = run_script("make_tables", "--from-csv", str(tmp_path / "dirs" / "runs.csv"), "--out",
                        str(tmp_path / "one"), "--paper", "imagenet_sparse")
    assert single.returncode == 0, single.stderr
    for name in ("sparse.csv", "sparse_detail.csv", "sparse_paired.csv"):
        assert (tmp_path / "both" / name).read_text() == (tmp_path / "one" / name).read_text(), name


def test_a_runs_csv_that_cannot_tell_runs_apart_is_refused(sweep, tmp_path):
    """Two alphas in job dirs named 0, 1, ...: runs.csv alone cannot tell them apart."""
    source = sweep[0] / "3_random_ham"
    for index, (alpha, seed) in enumerate([(5.0, 0), (20.0, 0)]):
        make_variant(source, tmp_path / "runs" / f"{index}", RANDOM_HAM + [f"ham.alpha={alpha}"], seed, 80.0 + index)
    make_tables([tmp_path / "runs"], tmp_path / "dirs")
    result = run_script("make_tables", "--from-csv", str(tmp_path / "dirs" / "runs.csv"), "--out", str(tmp_path / "x"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "nothing in runs.csv tells them apart" in result.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("content, message", [
    ("a,b\n1,2\n", "not a make_tables runs.csv (missing columns: run dir, status,"),
    (None, "No such file or directory"),
])
def test_a_bad_runs_csv_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "runs.csv"
    if content is not None:
        path.write_text(content)
    result = run_script("make_tables", "--from-csv", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: --from-csv {path}: ") and message in result.stderr
    assert not (tmp_path / "out").exists()
    both = run_script("make_tables", str(tmp_path), "--from-csv", str(path))
    assert both.returncode == 2 and "give either SWEEP_DIR ... or --from-csv RUNS_CSV" in both.stderr


def test_settings_that_differ_split_rows_and_name_themselves(sweep, tmp_path):
    """An alpha sweep: same method, different ham.alpha -> separate rows labelled with the alpha."""
    source = sweep[0] / "3_random_ham"
    alpha_dir = tmp_path / "alpha"
    for index, (alpha, acc) in enumerate([(5.0, 84.0), (20.0, 85.0), (5.0, 86.0)]):
        seed = index // 2
        make_variant(source, alpha_dir / f"{index}", RANDOM_HAM + ["sparsifier.sparsity=0.9", f"ham.alpha={alpha}"],
                     seed, acc)
    [table] = build_tables(collect_runs([alpha_dir]))
    assert table.rows == ["Random+HAM [ham.alpha=5]", "Random+HAM [ham.alpha=20]"]  # numbers sort as numbers
    assert format_cell(table.cells[("Random+HAM [ham.alpha=5]", 0.9)], "final_test_acc") == \
        "85.00 ± 1.41 (2)"


def test_runs_are_named_by_the_instance_a_plugin_by_its_own_name(sweep, tmp_path):
    """A plugin over the random config is its own row, never pooled with Random; killed runs use the config."""
    source, plugins = sweep[0] / "0_random", tmp_path / "plugins"
    make_variant(source, plugins / "0", [*PLUGIN, "ham=hyp_star", "sparsifier.sparsity=0.9"], 0, 70.0)
    make_variant(source, plugins / "1", [*PLUGIN, "ham=hyp_star", "sparsifier.sparsity=0.9"], 1, keep_summary=False)
    make_variant(source, plugins / "2", [*SIGNIN, "sparsifier.sparsity=0.9"], 3, keep_summary=False)
    runs = collect_runs([sweep[0], sweep[1], plugins])
    [sparse] = [t for t in build_tables(runs) if t.name == "sparse"]
    assert format_cell(sparse.cells[("Random+HAM", 0.9)], "final_test_acc") == "85.50 ± 0.71 (2)†"  # as before
    assert format_cell(sparse.cells[("plugin_pai+HAM", 0.9)], "final_test_acc") == "70.00 (1)"
    assert sparse.families["plugin_pai+HAM"] == "other"
    killed = sparse.cells[("sweep_fixtures.PluginPaI+HAM", 0.9)]  # no summary.json: the class path
    assert [r.path.name for r in killed.runs] == ["1"] and killed.flagged
    signin = sparse.cells[("Random+Sign-In", 0.9)]  # summaries say "random+signin"; the killed one's config too
    assert sorted(r.seed for r in signin.runs) == [0, 1, 2, 3] and len(signin.used) == 3
    assert sparse.rows[-2:] == ["plugin_pai+HAM", "sweep_fixtures.PluginPaI+HAM"]


def test_a_sweep_given_twice_counts_each_seed_once(sweep):
    runs = collect_runs([sweep[0], sweep[0] / "0_random"])  # the same run dir reached twice
    assert len(runs) == 8
    copy_dir = sweep[0].parent / "again"
    shutil.copytree(sweep[0] / "0_random", copy_dir / "0_random")
    summary = json.loads((copy_dir / "0_random" / "summary.json").read_text())
    (copy_dir / "0_random" / "summary.json").write_text(json.dumps({**summary, "final_test_acc": 81.0}))
    groups = group_runs(collect_runs([sweep[0], copy_dir]))
    random_09 = next(g for g in groups if g.first.method == "Random" and g.first.sparsity == 0.9)
    assert len(random_09.used) == 3 and len(random_09.duplicates) == 1
    assert random_09.values("final_test_acc") == [81.0, 82.0, 84.0]  # the newer copy of seed 0
    shutil.rmtree(copy_dir)


def _doc_tables(text: str) -> dict:
    """``### `name`: ...`` sections of docs/paper_numbers.md -> {name: {row label: {column: cell text}}}."""
    tables, name, header = {}, None, None
    for line in text.splitlines():
        match = re.match(r"### `(\w+)`", line)
        if match:
            name, header = match.group(1), None
            tables[name] = {}
        elif name and line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                row = dict(zip(header, cells))
                tables[name][row["method"]] = {k: v for k, v in row.items() if k not in ("family", "method")}
        elif name and header and not line.strip():
            name = None
    return tables


def test_paper_numbers_match_the_docs():
    """scripts/paper_numbers.yaml and docs/paper_numbers.md hold the same cells, both ways."""
    data = yaml.safe_load((REPO / "scripts" / "paper_numbers.yaml").read_text())
    text = (REPO / "docs" / "paper_numbers.md").read_text()
    documented = _doc_tables(text)
    expected = {name: {label: {(f"s={column:g}" if isinstance(column, float) else column): format_paper(value)
                               for column, value in values.items()}
                       for label, values in table["rows"].items()}
                for name, table in data.items()}
    assert documented == expected
    # the gains the doc quotes are the YAML's +HAM - method differences
    rows = data["imagenet_sparse"]["rows"]
    for method in ("Random", "AC/DC", "RiGL", "STR"):
        gains = " / ".join(f"{rows[method + '+HAM'][s][0] - rows[method][s][0]:+.2f}" for s in (0.8, 0.9, 0.95))
        assert f"{method} {gains}" in " ".join(text.split()), (method, gains)
    dense = data["imagenet_dense"]["rows"]
    plain, sam = (" / ".join(f"{dense['HAM'][c][0] - dense['baseline'][c][0]:+.2f}" for c in columns)
                  for columns in (("100 ep", "200 ep"), ("+SAM 100 ep", "+SAM 200 ep")))
    assert f"HAM - baseline: {plain} (100 / 200 epochs), with SAM {sam}" in " ".join(text.split())


def test_an_unreadable_run_config_is_one_clear_line(sweep, tmp_path):
    broken = tmp_path / "sweep" / "0"
    shutil.copytree(sweep[0] / "0_random", broken)
    (broken / ".hydra" / "config.yaml").write_text("sparsifier: [unclosed\n")
    result = run_script("make_tables", str(tmp_path / "sweep"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {broken / '.hydra' / 'config.yaml'}: not a readable run config (")
    assert not (tmp_path / "out").exists()


def test_no_runs_is_a_clear_error(tmp_path):
    result = run_script("make_tables", str(tmp_path))
    assert result.returncode != 0 and "no run dirs" in result.stderr


def test_the_repository_cites_only_its_own_files():
    """Facts the code relies on live in docs/; nothing points at files outside the checkout."""
    roots = [REPO / "docs", REPO / "scripts", REPO / "ham_bench", REPO / "sparsifiers", REPO / "configs",
             *(REPO / "results").glob("*/README.md"), REPO / "README.md"]
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()
             and p.suffix in (".md", ".py", ".yaml", ".sh")]
    assert len(files) > 50
    outside = "/".join(("shared", "design"))  # spelled in parts so this test does not cite it itself
    offenders = [str(p.relative_to(REPO)) for p in files if outside in p.read_text(errors="ignore")]
    assert offenders == []
