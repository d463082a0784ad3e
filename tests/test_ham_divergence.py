"""HAM warns, from the library and once, when its exponents say it is diverging; the trainer's divergence
messages name HAM's alpha and exponent statistics; the README's snippet is correct at its scale (issue 14,
item 1). Real Fashion-MNIST batches, real models, real processes for the CLI."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cli_runs import ham_bench, last_line, summary
from ham_bench.data import build_datasets, build_loader
from ham_bench.optim import HAM, HAMDivergenceWarning

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def loader():
    data = build_datasets(OmegaConf.create({"name": "fashion_mnist", "subset": 3000}))
    return build_loader(data.train, 128, shuffle=True, num_workers=0, seed=0, drop_last=True)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def train(model, opt, loader, epochs=2):
    """The README's loop; returns the last loss and the HAM divergence warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(epochs):
            for x, y in loader:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
    return loss.item(), [w for w in caught if issubclass(w.category, HAMDivergenceWarning)]


@pytest.mark.parametrize("diagnostics", [False, True])
def test_the_old_readme_snippet_diverges_and_ham_warns_once(loader, diagnostics):
    model = mlp()
    opt = HAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), alpha=200.0, beta=1e-3,
              diagnostics=diagnostics, implementation="foreach")
    loss, caught = train(model, opt, loader)
    assert not math.isfinite(loss)  # the failure the warning is about
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "above warn_exponent=0.05 (alpha=200, lr=0.1)" in message and "mean |exponent|" in message
    assert caught[0].filename == __file__  # points at the caller's opt.step()


def test_non_finite_exponents_warn_even_below_the_threshold(loader):
    model = mlp()
    opt = HAM(torch.optim.SGD(model.parameters(), lr=0.05), alpha=20.0, implementation="foreach", warn_every=1)
    with torch.no_grad():
        model[1].weight[0, 0] = math.nan
    _, caught = train(model, opt, loader, epochs=1)
    assert len(caught) == 1 and str(caught[0].message).startswith("HAM: non-finite exponents at HAM step 1")


def test_warn_exponent_none_turns_the_check_off(loader):
    model = mlp()
    opt = HAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), alpha=200.0, implementation="foreach",
              warn_exponent=None)
    loss, caught = train(model, opt, loader, epochs=1)
    assert not math.isfinite(loss) and caught == []


def test_bad_warn_settings_are_refused():
    params = [nn.Parameter(torch.ones(2, 2))]
    with pytest.raises(ValueError, match=r"warn_exponent must be > 0, or None"):
        HAM(torch.optim.SGD(params, lr=0.1), warn_exponent=0)
    with pytest.raises(ValueError, match=r"warn_every must be an int >= 1"):
        HAM(torch.optim.SGD(params, lr=0.1), warn_every=0)


def test_the_readme_snippet_trains_an_mlp_without_a_warning(loader):
    """The snippet's HAM line, as printed in the README, on LeNet-300-100 for 2 epochs of 3000 images."""
    text = README.read_text()
    line = re.search(r"^\s*opt = (HAM\(torch\.optim\.SGD\(model\.parameters\(\).*\))\s*$", text, re.M).group(1)
    model = mlp()
    opt = eval(line, {"HAM": HAM, "torch": torch, "model": model})
    opt.implementation = "foreach"
    opt.diagnostics_enabled = True
    loss, caught = train(model, opt, loader)
    assert math.isfinite(loss) and loss < 1.0 and caught == []
    assert opt.diagnostics()["ham_mean_abs_exponent"] < 0.01


def test_the_healthy_range_is_stated_with_numbers_in_the_readme():
    text = README.read_text()
    assert "lr*alpha*|g|" in text and "0.113" in text and "0.012" in text and "warn_exponent" in text


CNN = ["dataset.subset=3000", "epochs=2", "progress=false", "ham.implementation=foreach"]


def test_the_cli_warns_for_alpha_200_and_records_it(tmp_path):
    result = ham_bench(*CNN, "ham.alpha=200", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "warn_exponent=0.05" in line]
    assert len(lines) == 1 and "[WARNING] - HAM: the mean |exponent| per weight and step is" in lines[0]
    # the trainer reads HAM's deferred checks at its log_every reads: the message is still step 1's, at step 1's lr
    assert "at HAM step 1 " in lines[0] and "(alpha=200, lr=0.05)" in lines[0]
    record = summary(tmp_path / "run")
    assert any("warn_exponent=0.05" in w for w in record["warnings"])


def test_the_cli_stays_quiet_for_the_fmnist_recipe(tmp_path):
    result = ham_bench(*CNN, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HAM:" not in result.stdout + result.stderr
    assert summary(tmp_path / "run")["warnings"] == []


def test_a_non_finite_loss_with_ham_names_alpha_and_the_exponents(tmp_path):
    result = ham_bench("dataset.subset=1200", "progress=false", "model=mlp", "epochs=1", "optimizer.lr=10",
                       "ham.implementation=foreach", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    line = last_line(result.stderr)
    assert line.startswith("error: non-finite training loss at epoch 1, step 9 of 9: nan (HAM alpha=20, beta=0.001; ")
    # the check steps 1, 2, 4, 8 are read at the epoch's one log read (step 9); 8's exponents are already NaN
    assert re.search(r"the last finite check \(step 4\): mean \|exponent\| \d", line), line
    assert "a mean |exponent| above 0.05 means alpha is too large" in line


def test_a_bad_warn_exponent_is_one_line(tmp_path):
    result = ham_bench("ham.warn_exponent=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert last_line(result.stderr) == ("error: ham.warn_exponent must be a number > 0 (mean |exponent| per step; "
                                        "default 0.05) or null (no divergence warning), got -1")


def test_the_factory_passes_the_warning_settings_and_defaults_them():
    from ham_bench.optim import build_optimizer

    model = mlp()
    sgd = {"name": "sgd", "lr": 0.05}
    assert build_optimizer(model, sgd, {"enabled": True})._divergence.threshold == 0.05
    opt = build_optimizer(model, sgd, {"enabled": True, "warn_exponent": None, "warn_every": 7})
    assert opt._divergence.threshold is None and opt._divergence.every == 7


def test_deferred_checks_run_only_at_the_callers_reads_and_warn_there(loader):
    """The trainer's way (HamMeter): check steps only make a check due; check_divergence() at a read runs it."""
    model = mlp()
    opt = HAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), alpha=200.0, implementation="foreach")
    opt.defer_divergence_checks()
    reads_before_warning = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, (x, y) in enumerate(loader):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if not any(issubclass(w.category, HAMDivergenceWarning) for w in caught):
                reads_before_warning.append(step)
                assert opt._divergence.message is None  # no check ran inside a step
            if (step + 1) % 3 == 0:
                opt.check_divergence()
            if step == 8:
                break
    found = [w for w in caught if issubclass(w.category, HAMDivergenceWarning)]
    assert len(found) == 1 and "above warn_exponent=0.05 (alpha=200, lr=0.1)" in str(found[0].message)
    assert found[0].filename == __file__  # points at the caller's check_divergence()
    assert reads_before_warning[-1] % 3 == 2  # it came at a read (steps 2, 5, 8), not at a check step
    assert "at HAM step 4 " in str(found[0].message)  # the check step (1, 2: below the threshold), read at step 6
