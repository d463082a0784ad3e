"""Hydra callbacks of ham-bench (``hydra.callbacks`` in ``configs/train.yaml``).

``RunGuard``:

* ``on_run_start`` (a single run, before Hydra creates the run dir or writes
  ``.hydra/``): takes the run dir (``engine.run_dir.claim``: created or not,
  what it held, the lock) and decides what the run does
  (``engine.resume.plan_run``); a dir this run may not use is refused here,
  before anything of it is overwritten. A continued run keeps its own
  ``.hydra/`` (Hydra is told not to write one). Only the first process of a
  data-parallel launch does this; the others write nothing.
* ``on_multirun_start``: checks every job of the sweep before any starts
  (``ham_bench.sweep.check_sweep``).
* ``on_multirun_end``: one line per job that did not complete; exit status 3
  if any did not.

A refusal prints ``error: <one line>`` and exits with status 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from ham_bench.validation import one_line
from sparsifiers.config import ConfigError

USAGE_ERROR = 2


def refuse(message: str, claim=None) -> None:
    """``error: <message>`` on stderr, remove what this run created, exit with status 2."""
    if claim is not None:
        claim.discard()
    print(f"error: {str(message).splitlines()[0]}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


class RunGuard(Callback):
    def __init__(self) -> None:
        self.job_dirs: list[Path] | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        from ham_bench import distributed
        from ham_bench.engine import run_dir as run_dirs
        from ham_bench.engine.resume import plan_run
        from ham_bench.sweep import task_config, task_overrides

        if distributed.launch_rank() != 0:
            return
        HydraConfig.instance().set_config(config)  # as run_job does first: the run dir's interpolations need it
        claim = None
        try:
            path = Path(os.path.abspath(str(config.hydra.run.dir)))
            task = task_config(config)
            claim = run_dirs.claim(path, force=task.get("force") is True,
                                   extra_outputs=(f"{config.hydra.job.name}.log",))
            claim.plan = plan_run(task, path, task_overrides(config.hydra))
        except ConfigError as error:
            refuse(str(error), claim)
        except (HydraException, OmegaConfBaseException) as error:  # e.g. a value that does not resolve
            refuse(one_line(error), claim)
        if claim.plan.resumed_from is not None and Path(os.path.abspath(claim.plan.resumed_from)) == path:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None  # keep the run's own .hydra/

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from ham_bench.sweep import check_sweep

        try:
            self.job_dirs = check_sweep(config)
        except ConfigError as error:
            refuse(str(error))
        except (HydraException, OmegaConfBaseException) as error:
            refuse(one_line(error))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ham_bench.sweep import report

        code = report(config, self.job_dirs)
        if code:
            sys.exit(code)
