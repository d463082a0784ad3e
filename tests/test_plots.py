"""The plots (ham_bench.analysis.plots, scripts/plot_sign_flips.py) write its PNG files from real metrics.jsonl files.

The runs are copies of one real run (tests/sweep_fixtures.py) relabelled as baseline, +Sign-In
and +HAM with known sign-flip counts, at three sparsities, plus a failed run that must be left out.
"""

import shutil

import matplotlib.image
import matplotlib.pyplot as plt
import pytest

from ham_bench.analysis import plots
from ham_bench.analysis.report import make_tables
from ham_bench.analysis.runs import collect_runs
from ham_bench.atomic_io import read_jsonl, savefig
from sweep_fixtures import BASE_FLIPS, PLUGIN, make_variant, plot_sweep, real_run_dir, run_script


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return plot_sweep(real_run_dir(tmp_path_factory), tmp_path_factory.mktemp("plot_sweep"))


def test_sign_flip_series_are_the_metrics_rows(sweep):
    root = sweep
    runs = [r for r in collect_runs([root]) if r.status == "completed" and r.sparsity == 0.9 and r.ham != "off"]
    assert len(runs) == 2
    epochs, mean, low, high = plots._per_epoch([read_jsonl(r.path / "metrics.jsonl") for r in runs], "sign_flips")
    assert epochs == [1, 2]
    for index, flips in enumerate(BASE_FLIPS):  # seeds scaled by 3 and 6: mean 4.5x, band 3x..6x
        assert mean[index] == pytest.approx(4.5 * flips)
        assert (low[index], high[index]) == (3 * flips, 6 * flips)


def test_one_training_setting_per_figure(sweep):
    root = sweep
    runs = [r for r in collect_runs([root]) if r.status == "completed"]
    kept = plots._one_setting(runs)
    assert {(r.optimizer, r.epochs) for r in kept} == {("sgd", 2)}
    assert [r.path.name for r in runs if r not in kept] == ["dense_sam"]


def test_cli_writes_both_pngs(sweep, tmp_path):
    root = sweep
    out = tmp_path / "plots"
    result = run_script("plot_sign_flips", str(root), "--out", str(out), "--sparsity", "0.9")
    assert result.returncode == 0, result.stderr
    assert "left out 1 runs" in result.stderr and "ham_failed (failed)" in result.stderr
    for name in ("sign_flips.png", "accuracy_vs_sparsity.png", "ham_gain.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.01  # not a blank canvas
        assert str(path) in result.stdout


def test_nothing_at_the_requested_sparsity_still_writes_the_accuracy_plot(sweep, tmp_path):
    root = sweep
    written = plots.make_plots([root], tmp_path, sparsity=0.5, log_scale=True)
    names = sorted(p.name for p in written)
    assert "accuracy_vs_sparsity.png" in names
    assert names == ["accuracy_vs_sparsity.png", "ham_gain.png", "sign_flips.png"]  # dense still has a panel


def test_a_plugin_over_the_random_config_has_its_own_panel(sweep, tmp_path):
    plugin = tmp_path / "plugin"
    make_variant(sweep / "random_0.9_0", plugin, [*PLUGIN, "ham=off", "sparsifier.sparsity=0.9"], 0, 70.0)
    figure = plots.sign_flips_figure(collect_runs([sweep, plugin]), 0.9)
    titles = [ax.get_title() for ax in figure.axes[:len(figure.axes) // 2]]
    assert titles == ["dense", "Random, s = 0.9", "plugin_pai, s = 0.9"]
    random_panel = figure.axes[1]
    assert [line.get_label() for line in random_panel.lines] == ["Random (n=2)", "Random+Sign-In (n=2)",
                                                                 "Random+HAM (n=2)"]


def test_the_gain_figure_draws_the_differences_on_their_own_axis(sweep):
    figure = plots.ham_gain_figure(collect_runs([sweep]))
    [ax] = figure.axes
    [gain] = ax.containers
    line, _caps, [bars] = gain.lines
    assert gain.get_label() == "Random+HAM - Random"
    assert list(line.get_xdata()) == [0.8, 0.9, 0.95]
    assert list(line.get_ydata()) == pytest.approx([1.5, 1.5, 1.5])  # +HAM is 1.5 points above, every seed
    # bars: ± the standard error; each cell's two seeds differ by 1 point: sqrt(0.5 / 2 + 0.5 / 2)
    assert [abs(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()] == pytest.approx([0.5 ** 0.5] * 3)
    assert ax.get_ylabel() == "+HAM - method (test accuracy, points)"
    assert "final test accuracy" in figure._suptitle.get_text()


def test_titles_and_labels_read_as_words(sweep):
    runs = collect_runs([sweep])
    accuracy = plots.accuracy_figure(runs)
    assert accuracy._suptitle.get_text().startswith("Final test accuracy vs target sparsity")
    flips = plots.sign_flips_figure(runs, 0.9)
    assert flips.axes[len(flips.axes) // 2].get_ylabel() == "fraction of weights nonzero at init\nwhose sign differs"
    for figure in (accuracy, flips):
        texts = [figure._suptitle.get_text()] + [t for ax in figure.axes for t in (ax.get_title(), ax.get_ylabel())]
        assert not [t for t in texts if "_" in t], texts  # no raw summary keys


def test_plots_from_a_runs_csv(sweep, tmp_path):
    make_tables([sweep], tmp_path / "tables")
    result = run_script("plot_sign_flips", "--from-csv", str(tmp_path / "tables" / "runs.csv"), "--out",
                        str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["accuracy_vs_sparsity.png", "ham_gain.png"]
    assert "sign_flips.png: not drawn, runs.csv has no per-epoch sign flips" in result.stderr


def test_a_broken_metrics_file_is_one_clear_line_and_nothing_is_written(sweep, tmp_path):
    broken = tmp_path / "sweep"
    shutil.copytree(sweep / "random_0.9_0", broken / "random_0.9_0")
    with open(broken / "random_0.9_0" / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "sign_flips": \n')
    result = run_script("plot_sign_flips", str(broken), "--out", str(tmp_path / "png"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {broken / 'random_0.9_0' / 'metrics.jsonl'}: not a JSON-lines file")
    assert not (tmp_path / "png").exists()


def test_a_figure_that_fails_to_render_leaves_no_file(tmp_path):
    figure = plt.figure()
    with pytest.raises(ValueError, match="not supported"):
        savefig(tmp_path / "figure.notaformat", figure)
    plt.close(figure)
    assert list(tmp_path.iterdir()) == []
