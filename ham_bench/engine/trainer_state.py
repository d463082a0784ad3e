"""What a checkpoint holds of a trainer, and how it is put back.

``state_dict(trainer, epoch, progress)``: the model, optimizer (HAM/SAM
included), scheduler, sparsifier and every meter's state, the epochs done,
the position inside the next one (``engine.progress.EpochProgress``, or
None at an epoch's end), the best accuracy and the first epoch's loss (the
divergence rule), the RNG states, the seconds of the run's segments so far
(``segment_seconds``: a resumed run's ``seconds`` is their sum) and the
trainer's ``checkpoint_extra`` (the run's config and model arguments, the
wandb run id and group). Only tensors and plain values, so
it loads with ``weights_only=True``.

``restore(trainer, state)`` loads it into a freshly built trainer; a
checkpoint that does not fit the run (another model, method or number of
steps per epoch, a missing entry) is a one-line ``CheckpointError``.
"""

from __future__ import annotations

from typing import Any

from ham_bench.engine.checkpoint import CheckpointError
from ham_bench.engine.progress import rng_state, set_rng_state


def state_dict(trainer, epoch: int, progress: dict | None = None) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "progress": progress,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "sparsifier": trainer.sparsifier.state_dict(),
        "meters": {meter.name: meter.state_dict() for meter in trainer.meters},
        "steps_per_epoch": trainer.steps_per_epoch,
        "best_acc": trainer.best_acc,
        "first_loss": trainer.first_loss,
        "rng": rng_state(),
        "segment_seconds": trainer.segment_seconds(),  # a resumed run's seconds add up its segments
        **trainer.checkpoint_extra,
    }


def restore(trainer, state: dict[str, Any]) -> None:
    try:
        if state.get("progress") and int(state["steps_per_epoch"]) != trainer.steps_per_epoch:
            raise CheckpointError(f"the checkpoint stopped inside an epoch of {state['steps_per_epoch']} steps; "
                                  f"this run's epochs have {trainer.steps_per_epoch} (batch_size or data changed)")
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.sparsifier.load_state_dict(state["sparsifier"])
        for meter in trainer.meters:  # after model and sparsifier: meters re-read the masks they restore against
            meter.load_state_dict(state["meters"][meter.name])
        trainer.best_acc = state["best_acc"]
        trainer.first_loss = state.get("first_loss")
        set_rng_state(state["rng"])
        trainer.start_epoch = int(state["epoch"])
        trainer.previous_seconds = [float(s) for s in state.get("segment_seconds") or ()]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"the checkpoint does not fit this run ({type(error).__name__}: {reason})") from None
