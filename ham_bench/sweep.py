"""A sweep (``ham-bench -m ...``) checked before any job starts, and its outcome told at the end.

Before launching (``check_sweep``, from Hydra's ``on_multirun_start``): every
job's config is composed as the launcher will compose it, its run dir
worked out (``hydra.sweep.dir``/``hydra.sweep.subdir``) and checked as a run
of its own would be: the run dir rules (``engine.resume.plan_run``: a dir
holding another run is refused unless ``force=true``; an interrupted run of
the same config is continued) and every value (``validation``). The first bad
job ends the command with one line naming the job and the key, exit status 2,
before the sweep dir exists. Only Hydra's basic sweeper can be expanded this
way; with another sweeper (optuna, ...) each job is checked when it starts.

A job that fails later (missing data on a node, a batch larger than the data,
a diverging loss) is recorded in its run dir's ``summary.json`` and the sweep
carries on; ``report`` (``on_multirun_end``) prints one line per job that did
not complete and the sweep exits with status 3 if any did not.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from ham_bench.engine.run_dir import ensure_free, run_status
from sparsifiers.config import ConfigError

FAILED_EXIT = 3
OK_STATUSES = ("completed", "stopped")


def task_config(config: DictConfig) -> DictConfig:
    """The run config without its ``hydra`` node (what the app is given)."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        task.pop("hydra", None)
    return task


def task_overrides(hydra_node: DictConfig) -> list[str]:
    """The task overrides recorded in a ``hydra`` config node, as written (``${...}`` left unresolved)."""
    return list(OmegaConf.to_container(hydra_node.overrides.task, resolve=False))


def job_overrides(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides, as Hydra's basic sweeper expands them; None for another sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + task_overrides(config.hydra)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    return [list(job) for batch in batches for job in batch]


def check_sweep(config: DictConfig) -> list[Path] | None:
    """Check every job of the sweep (module docstring); their run dirs, or None when they cannot be known."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from ham_bench.engine.resume import plan_run
    from ham_bench.validation import one_line, validate_config

    jobs = job_overrides(config)
    if jobs is None:
        return None
    HydraConfig.instance().set_config(config)
    sweep_dir = Path(str(config.hydra.sweep.dir))  # resolved once here: every job copies this ${now:...}
    loader = GlobalHydra.instance().config_loader()
    dirs = []
    for number, overrides in enumerate(jobs):
        try:
            job = loader.load_sweep_config(config, overrides)
            with open_dict(job.hydra.job):
                job.hydra.job.num = number
            HydraConfig.instance().set_config(job)
            job_dir = Path(os.path.abspath(sweep_dir / str(job.hydra.sweep.subdir)))
            inside = Path(os.path.abspath(sweep_dir))
            if job_dir != inside and inside not in job_dir.parents:  # (resume=DIR -m: the job dir is DIR itself)
                raise ConfigError(f"its run dir {job_dir} is outside the sweep dir {sweep_dir}")
            ensure_free(job_dir)
            validate_config(plan_run(task_config(job), job_dir, task_overrides(job.hydra)).cfg)
        except (ConfigError, HydraException, OmegaConfBaseException) as error:
            reason = error if isinstance(error, ConfigError) else one_line(error)
            raise ConfigError(f"sweep job #{number} ({' '.join(overrides)}): {reason}; nothing was launched") from None
        dirs.append(job_dir)
    HydraConfig.instance().set_config(config)
    return dirs


def report(config: DictConfig, dirs: list[Path] | None) -> int:
    """One line per job that did not complete (stderr); the sweep's exit status (0, or 3)."""
    if dirs is None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if sweep_dir.is_dir() else []
    statuses = [(path, run_status(path) or "not started") for path in dirs]
    bad = [(path, status) for path, status in statuses if status not in OK_STATUSES]
    for path, status in bad:
        print(f"sweep: {path.name}: {status}{_why(path)}", file=sys.stderr)
    if bad:
        print(f"sweep: {len(statuses) - len(bad)} of {len(statuses)} runs completed; see summary.json in the "
              f"run dirs above", file=sys.stderr)
        return FAILED_EXIT
    return 0


def _why(run_dir: Path) -> str:
    try:
        error = json.loads((run_dir / "summary.json").read_text()).get("error")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" ({str(error).splitlines()[0]})" if error else ""
