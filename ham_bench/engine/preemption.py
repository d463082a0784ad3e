"""Stopping cleanly on a signal, and SLURM's requeue through submitit.

While a run trains, :class:`StopSignals` handles SIGTERM (sent by SLURM,
torchrun and ``kill``), SIGUSR2 (submitit's time-out and preemption signal,
``--signal=USR2@<signal_delay_s>``), SIGHUP (the terminal went away) and
SIGINT (Ctrl-C). A handler only records the signal; the trainer looks at it
at the next step boundary (under DDP, at the next ``log_every`` boundary,
where the ranks agree through the all-reduce they already make), writes a
checkpoint of that step, ends the run with ``status: interrupted`` and the
process exits with 128 + the signal's number (143 for SIGTERM). A second
Ctrl-C stops at once (KeyboardInterrupt), losing the steps since the last
checkpoint. DataLoader workers are forked after the handlers are installed,
so they inherit them and survive a signal sent to the whole process group.

Requeue. Under submitit (``hydra/launcher=slurm`` / ``slurm_ddp``, or its
local executor) the handler that was installed before ours, submitit's
``checkpoint_and_try_requeue``, is called once the run's files are written
(:func:`hand_over`): it calls the launcher's ``checkpoint()``, which
hydra-submitit-launcher defines to resubmit the same job with the same
overrides, requeues the job (``scontrol requeue``) and exits. The requeued
job lands in the same run dir, finds the interrupted run with the same config
there and continues it (``ham_bench.engine.resume``): a resume, not a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

log = logging.getLogger("ham_bench")

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR2", "SIGHUP", "SIGINT") if hasattr(signal, name))


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint of the step it reached."""

    def __init__(self, signum: int, where: str):
        self.signum = signum
        super().__init__(f"stopped by {signal_name(signum)} at {where}")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


def submitit_signal() -> int | None:
    """The signal submitit requeues on (SUBMITIT_PREEMPT_SIGNAL, default USR2), inside a submitit job; else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


class StopSignals:
    """Records the first stop signal while installed (``with StopSignals() as stop: ... stop.signum``)."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum
            if os.getpid() == self._pid:  # not in a DataLoader worker, which inherited the handler
                log.warning("%s received: the run writes a checkpoint at the next step and stops%s",
                            signal_name(signum), " (Ctrl-C again stops at once)" if signum == signal.SIGINT else "")

    def __enter__(self) -> "StopSignals":
        self._pid = os.getpid()
        for signum in SIGNALS:
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                break
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():  # kept in self.previous for hand_over
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    @property
    def requested(self) -> bool:
        return self.signum is not None


def hand_over(signum: int, previous: dict[int, object]) -> None:
    """After an interrupted run wrote its files: let submitit requeue the job, else exit with 128 + signum.

    ``previous``: the handlers installed before :class:`StopSignals` (its ``previous``). Under
    submitit, for its requeue signal, that is ``checkpoint_and_try_requeue``: it requeues and
    exits on task 0 and returns on the others (which then exit here).
    """
    previous_handler = previous.get(signum)
    if signum == submitit_signal() and callable(previous_handler):
        log.warning("%s: handing over to submitit, which requeues the job (it continues from this checkpoint)",
                    signal_name(signum))
        previous_handler(signum, None)
    sys.exit(exit_code(signum))
