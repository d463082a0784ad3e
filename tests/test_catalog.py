"""ham-bench explains itself: its own --help, `ham-bench list`, and export's help under its real name."""

import re
import subprocess
import sys
from pathlib import Path

from ham_bench.catalog import app_help, listing, run_keys
from sparsifiers import MaskedSparsifier, registry

REPO = Path(__file__).resolve().parent.parent


def ham_bench(*args):
    return subprocess.run([sys.executable, "-m", "ham_bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_help_is_the_apps_own_page():
    result = ham_bench("--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text == app_help() + "\n"
    for group in ("dataset=", "model=", "optimizer=", "ham=", "sparsifier=", "schedule=", "experiment="):
        assert group in text
    assert "ham-bench list" in text and "ham-bench export RUN_DIR" in text and "rigl" in text
    # every run key of configs/train.yaml is there with its one-line description
    for key, default, description in run_keys():
        assert f"{key}={default}" in text and description in text
    assert all(description for key, _, description in run_keys()), "a run key without a comment in train.yaml"


def test_list_shows_methods_with_their_papers_and_installed_plugins(monkeypatch):
    class Listed(MaskedSparsifier):
        """A plugin's one-line description."""

        name = "listed_plugin_example"

    monkeypatch.setitem(registry._REGISTRY, Listed.name, Listed)  # registered for this test only

    text = listing()
    assert re.search(r"\n  rigl +RigL", text) and re.search(r"\n  signin +Sign-In \(NeurIPS 2025\)", text)
    assert "listed_plugin_example" in text and "A plugin's one-line description." in text
    assert "sparsifier=random sparsifier.name=listed_plugin_example" in text  # how to pick one without a config
    for section in ("Optimizer (optimizer=...)", "Model (model=...)", "Experiment (experiment=...)"):
        assert section in text
    result = ham_bench("list")
    assert result.returncode == 0 and "fmnist_sparse" in result.stdout and "resnet50" in result.stdout


def test_export_help_names_the_command_users_type():
    result = ham_bench("export", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: ham-bench export ")


def test_summary_records_where_a_result_came_from(tmp_path):
    import json

    result = ham_bench("dataset.subset=300", "epochs=1", "progress=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    facts = json.loads((tmp_path / "summary.json").read_text())["provenance"]
    assert len(facts["git_commit"]) == 40 and isinstance(facts["git_dirty"], bool)
    assert facts["packages"]["torch"] and facts["packages"]["ham-bench"]
    assert facts["cpu_capability"] and facts["cpu_model"] and facts["threads"] >= 1
    assert facts["device"] == "cpu" and facts["command"][3:] == ["dataset.subset=300", "epochs=1", "progress=false",
                                                                 f"hydra.run.dir={tmp_path}"]
