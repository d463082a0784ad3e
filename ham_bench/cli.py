"""The ``ham-bench`` command: the Hydra app over ``configs/train.yaml``.

    ham-bench                                   # the default experiment
    ham-bench -m ham=off,hyp_star seed=0,1,2    # a Hydra multirun sweep
    ham-bench resume=outputs/2026-11-27/12-00-00  # continue a run in its own dir (resume=latest: the newest)
    ham-bench export outputs/2026-11-27/12-00-00  # compressed sparse model (see ham_bench.export)
    ham-bench list / ham-bench --help             # what there is: methods, optimizers, models, experiments, keys

Under ``torchrun --nproc_per_node=N -m ham_bench ...`` every rank runs this app;
they join one process group (``ham_bench.distributed``) and share rank 0's
run dir: ranks > 0 tell Hydra to write nothing into theirs and remove it.

The run dir is claimed and checked before Hydra writes into it
(``hydra_callbacks.RunGuard``, ``engine.run_dir``, ``engine.resume``).

Exit status: 0 completed (or ``stopped`` by ``stop_after_epochs``); 2 refused
before training, with one line ``error: ...`` and nothing this process
created left behind (a bad value, missing data, a run dir in use or holding
another run, an unusable checkpoint); 3 the run failed or diverged (a sweep:
any of its jobs); 128 + N interrupted by signal N after writing a checkpoint
of the step it reached (143 SIGTERM, 140 SIGUSR2, 129 SIGHUP, 130 SIGINT). A
traceback (status 1) is a bug. In a sweep a job's refusal or failure is
recorded in its run dir and the sweep carries on.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
USAGE_ERROR = 2
FAILED = 3
_TASK_STARTED = False  # set when Hydra hands the composed config to the app
log = logging.getLogger("ham_bench")


def run_group(experiment: str | None) -> str:
    """The output folder of a run: ``<experiment>/<date>``, or ``<date>`` without an experiment."""
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    return date if experiment in (None, "None", "null") else f"{experiment}/{date}"


def dir_name(text: str) -> str:
    """One path component from a sweep job's overrides: separators replaced, at most 200 bytes.

    A value such as ``dataset.root=../../x`` thus names a dir inside the sweep dir (``..`` is
    only ever part of a longer name), never one outside it.
    """
    name = str(text).replace("/", "_").replace("\\", "_").replace("\0", "")
    if name in ("", ".", ".."):
        name = name.replace(".", "_") or "_"
    if len(name.encode()) > 200:
        name = name.encode()[:180].decode(errors="ignore") + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


OmegaConf.register_new_resolver("run_group", run_group, replace=True, use_cache=True)  # train.yaml's run dirs
OmegaConf.register_new_resolver("dir_name", dir_name, replace=True)  # train.yaml's sweep job dirs


def _error(message: str) -> None:
    print(f"error: {str(message).splitlines()[0]}", file=sys.stderr)


def _record_refusal(run_dir: Path, cfg: DictConfig, message: str) -> None:
    """A sweep job refused after it took its dir: summary.json says why, so the sweep's tables list it."""
    from ham_bench import atomic_io

    method = {"sparsifier": (cfg.get("sparsifier") or {}).get("name"), "seed": cfg.get("seed")}
    try:
        atomic_io.write_json(run_dir / "summary.json", {"status": "failed", "error": message, "epochs": 0,
                                                       "epochs_planned": cfg.get("epochs"), "method": method})
    except OSError as error:
        _error(str(error))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def app(cfg: DictConfig) -> float | None:
    from ham_bench import distributed
    from ham_bench.data import DatasetNotFoundError
    from ham_bench.engine import run_dir as run_dirs
    from ham_bench.engine.preemption import StopSignals, hand_over
    from ham_bench.engine.resume import plan_run
    from ham_bench.run import run_experiment
    from ham_bench.sweep import task_overrides
    from ham_bench.validation import ConfigError, validate_config

    global _TASK_STARTED
    _TASK_STARTED = True
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    main_rank = distributed.launch_rank() == 0
    claim = run_dirs.claimed(run_dir) if main_rank else None  # taken by RunGuard before Hydra wrote anything
    plan = None
    stop = StopSignals()
    try:
        if main_rank and claim is None:  # a sweep job: checked before the sweep started, its dir made by Hydra
            claim = run_dirs.claim(run_dir, force=cfg.get("force") is True)
        plan = claim.plan if claim is not None and claim.plan is not None else \
            plan_run(cfg, run_dir, task_overrides(hydra_cfg))
        if distributed.init(plan.cfg.device):  # launched as one rank of several (torchrun, submitit)
            run_dir = distributed.shared_run_dir(run_dir)
        validate_config(plan.cfg)
        if plan.replaces and main_rank:
            run_dirs.clear_record(run_dir)
            log.info(plan.note)
        with stop:
            summary = run_experiment(plan.cfg, run_dir, plan.resume_state, stop)
    except (ConfigError, DatasetNotFoundError) as exc:  # user errors: one line, exit 2; anything else is a bug
        message = str(exc).splitlines()[0]
        if multirun:  # the sweep carries on; the job's record says why it did not run
            if claim is not None and plan is not None:
                _record_refusal(run_dir, cfg, message)
            _error(message)
            return None
        if claim is not None:
            claim.discard()
            claim = None
        _error(message)
        sys.exit(USAGE_ERROR)
    finally:
        if claim is not None:
            claim.release()
    distributed.finish()
    status = summary["status"]
    if status == "interrupted":
        if main_rank:
            print(f"interrupted: {summary['error']}", file=sys.stderr)
        hand_over(stop.signum or 15, stop.previous)
    if status in ("failed", "diverged"):
        if main_rank:
            _error(summary["error"])
        if not multirun:
            sys.exit(FAILED)
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
    ``resume=latest`` is the newest run under outputs/ and multirun/ that did not complete.
    """
    for index, arg in enumerate(argv):
        if arg.startswith("resume=") and arg.split("=", 1)[1] not in ("", "null"):
            value = arg.split("=", 1)[1]
            if value == "latest":
                from ham_bench.engine.resume import latest_run

                value = str(latest_run())
            run_dir = _hydra_string(value)
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
    from sparsifiers.config import ConfigError

    try:
        sys.argv[1:] = _resume_overrides(sys.argv[1:])
    except ConfigError as error:
        _error(str(error))
        sys.exit(USAGE_ERROR)
    if os.environ.get("RANK", "0") != "0":  # a torchrun rank other than 0: Hydra writes nothing for it
        from ham_bench.distributed import hydra_overrides_for_rank

        sys.argv += hydra_overrides_for_rank(sys.argv[1:])
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    global _TASK_STARTED
    _TASK_STARTED = False
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises instead of printing: one line below, or a bug's
    try:                                            # whole traceback
        app()
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once (summary.json says what was lost)
        print("interrupted: stopped at once by a second Ctrl-C; the steps since the last checkpoint are lost",
              file=sys.stderr)
        sys.exit(130)
    except (HydraException, OmegaConfBaseException) as error:
        if _TASK_STARTED:  # raised while the run ran: a bug, with its traceback
            raise
        from ham_bench.validation import one_line

        _error(one_line(error))  # the command line did not compose: nothing ran, nothing was written
        sys.exit(USAGE_ERROR)


if __name__ == "__main__":
    main()
