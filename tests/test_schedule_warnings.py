"""Degenerate schedules are said out loud (and recorded), and a typo of a run key is refused."""

import logging

import pytest
import torch
from torch import nn

from group_configs import group_option
from ham_bench.cli import CONFIG_DIR
from ham_bench.validation import validate_config
from sparsifiers import ConfigError, TrainingContext, build_sparsifier


def warnings_for(cfg, epochs=2, steps=23):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(model, TrainingContext(epochs=epochs, steps_per_epoch=steps))
    return sparsifier.schedule_warnings()


def test_rigl_set_and_mest_without_any_update_in_the_run_are_warned_about():
    # 46 steps, dT = 100: RigL would train exactly as a fixed random mask
    (line,) = warnings_for({"name": "rigl", "sparsity": 0.9, "update_interval": 100})
    assert line.startswith("rigl: no mask update in this run of 46 steps") and "update_interval" in line
    assert warnings_for({"name": "rigl", "sparsity": 0.9, "update_interval": 10}) == []
    assert warnings_for({"name": "set", "sparsity": 0.9, "update_interval": 100})[0].startswith("set: no mask update")
    assert warnings_for({"name": "signin", "inner": "rigl", "sparsity": 0.9, "inner_kwargs": {"update_interval": 100}})


def test_acdc_phases_shorter_than_a_step_and_runs_without_a_cycle_are_warned_about():
    lines = warnings_for({"name": "acdc", "sparsity": 0.9, "compressed_length": 0.01, "decompressed_length": 0.01},
                         epochs=1, steps=46)
    assert any("compressed_length=0.01 is 0.46 steps" in line and "stretched to 1 step" in line for line in lines)
    assert any("decompressed_length=0.01 is 0.46 steps" in line and "vanishes" in line for line in lines)
    assert warnings_for(group_option("sparsifier", "acdc"), epochs=10, steps=50) == []


def test_projections_without_fine_tuning_and_str_without_a_target_are_warned_about():
    (line,) = warnings_for({"name": "str", "sparsity": 0.9}, epochs=1)
    assert "projection_at=0.9 falls at the end of the last epoch" in line
    assert warnings_for({"name": "str", "sparsity": 0.9}, epochs=10) == []
    (line,) = warnings_for({"name": "str", "sparsity": 0.9, "final_projection": False}, epochs=10)
    assert "not enforced" in line
    assert "prune_at=0.9" in warnings_for({"name": "pilot", "sparsity": 0.9}, epochs=1)[0]


def test_the_run_logs_the_warning_and_records_it_in_the_summary(tmp_path, caplog):
    from hydra import compose, initialize_config_dir

    from ham_bench.run import run_experiment

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["sparsifier=rigl", "dataset.subset=1500", "batch_size=64",
                                                      "epochs=2", "progress=false", "ham=off"])
    with caplog.at_level(logging.WARNING, logger="ham_bench"):
        summary = run_experiment(cfg, tmp_path)
    assert summary["status"] == "completed"
    assert summary["warnings"][0].startswith("rigl: no mask update in this run of 46 steps")
    assert any("rigl: no mask update" in record.message for record in caplog.records)


def test_a_typo_of_a_run_key_is_refused():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+epoch=3"])
    with pytest.raises(ConfigError, match=r"^epoch is not a setting of ham-bench \(did you mean epochs\?\)"):
        validate_config(cfg)
