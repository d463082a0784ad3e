"""The ``ham-bench`` command: the Hydra app over ``configs/train.yaml``.

    ham-bench                                   # the default experiment
    ham-bench -m ham=off,hyp_star seed=0,1,2    # a Hydra multirun sweep
    ham-bench resume=outputs/2026-11-27/12-00-00  # continue a run in its own dir
    ham-bench export outputs/2026-11-27/12-00-00  # compressed sparse model (see ham_bench.export)
    ham-bench list / ham-bench --help             # what there is: methods, optimizers, models, experiments, keys

Under ``torchrun --nproc_per_node=N -m ham_bench ...`` every rank runs this app;
they join one process group (``ham_bench.distributed``) and share rank 0's
run dir: ranks > 0 tell Hydra to write nothing into theirs and remove it.

Errors a user can cause (bad values, missing data, unknown names) print one
line, ``error: ...``, and exit with status 2; the run dir such a run created
is removed, so no half-made run dir is left behind.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
USAGE_ERROR = 2


def run_group(experiment: str | None) -> str:
    """The output folder of a run: ``<experiment>/<date>``, or ``<date>`` without an experiment."""
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    return date if experiment in (None, "None", "null") else f"{experiment}/{date}"


OmegaConf.register_new_resolver("run_group", run_group, replace=True)  # hydra.run.dir in configs/train.yaml


def _fail(message: str, run_dir: Path | None) -> None:
    from ham_bench import distributed

    if run_dir is not None and distributed.is_main_process() and not (run_dir / "summary.json").exists() \
            and not (run_dir / "checkpoint.pt").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def _resumed(resume: str) -> tuple[DictConfig, dict]:
    """The run config stored in ``resume``'s checkpoint, and the checkpoint (read once, here)."""
    from ham_bench.engine.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint

    checkpoint = Path(resume) / CHECKPOINT_NAME
    if not checkpoint.exists():
        raise CheckpointError(f"resume={resume}: no {CHECKPOINT_NAME} in that run dir")
    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["config"])
    cfg.resume = resume
    cfg.stop_after_epochs = None
    return cfg, state


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def app(cfg: DictConfig) -> float | None:
    from ham_bench import distributed
    from ham_bench.data import DatasetNotFoundError
    from ham_bench.validation import ConfigError, validate_config

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume_state = None
    if cfg.get("resume"):
        try:
            cfg, resume_state = _resumed(cfg.resume)
        except ConfigError as exc:
            _fail(str(exc).splitlines()[0], None)
    if distributed.init(cfg.device):  # launched as one rank of several (torchrun, submitit)
        run_dir = distributed.shared_run_dir(run_dir)
    try:
        validate_config(cfg)
        from ham_bench.run import run_experiment

        summary = run_experiment(cfg, run_dir, resume_state)
    except (ConfigError, DatasetNotFoundError) as exc:  # user errors: one line, exit 2; anything else is a bug
        _fail(str(exc).splitlines()[0], run_dir)
    distributed.finish()
    return summary.get("final_test_acc")


def _hydra_string(value: str) -> str:
    """``value`` as a quoted Hydra override value: a sweep job's dir name holds '=' and ','."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value  # quoted by the user already
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _resume_overrides(argv: list[str]) -> list[str]:
    """``resume=DIR`` continues in DIR itself, and Hydra must not rewrite DIR/.hydra.

    Returns ``argv`` with DIR quoted and the overrides that make DIR the run's dir, also
    with ``-m`` (how a run is resumed through a launcher, e.g. hydra/launcher=slurm_ddp).
    """
    for index, arg in enumerate(argv):
        if arg.startswith("resume=") and arg.split("=", 1)[1] not in ("", "null"):
            run_dir = _hydra_string(arg.split("=", 1)[1])
            return [*argv[:index], f"resume={run_dir}", *argv[index + 1:], f"hydra.run.dir={run_dir}",
                    f"hydra.sweep.dir={run_dir}", "hydra.sweep.subdir=.", "hydra.output_subdir=null"]
    return argv


def main() -> None:
    if sys.argv[1:] in (["--help"], ["-h"]) or sys.argv[1:2] == ["list"]:
        from ham_bench.catalog import app_help, listing

        print(listing() if sys.argv[1:2] == ["list"] else app_help())
        sys.exit(0)
    if sys.argv[1:2] == ["export"]:
        from ham_bench.export import main as export_main

        sys.exit(export_main(sys.argv[2:]))
    sys.argv[1:] = _resume_overrides(sys.argv[1:])
    if os.environ.get("RANK", "0") != "0":  # a torchrun rank other than 0: Hydra writes nothing for it
        from ham_bench.distributed import hydra_overrides_for_rank

        sys.argv += hydra_overrides_for_rank(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
