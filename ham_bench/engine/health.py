"""Is a run still training? Non-finite values end it as ``failed``, an exploding loss as ``diverged``.

Checked by the trainer where it reads values anyway (no host sync added):

* the training loss, every ``log_every`` steps (its running mean over the
  epoch so far), and the test loss after each evaluation: NaN or inf is
  :class:`NonFiniteLossError`;
* the weights before every checkpoint, so a checkpoint is never written with
  NaN/inf in it and "the last good checkpoint" always is one;
* the divergence rule, after each epoch, with C the number of classes and F
  the run key ``divergence_factor`` (default 10, ``null`` turns it off): the
  run diverged when the epoch's training loss exceeds F x max(the first
  epoch's training loss, ln C), or when its training or test accuracy is at
  chance (at most 2 x 100/C %) while that split's loss exceeds F x ln C
  (ln C is the loss of a uniform guess; a loss F times above it at chance
  accuracy is an exploding model, not a slow one). :class:`DivergedError`.
"""

from __future__ import annotations

import math

import torch


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or weight; the run stops as ``failed``."""


class DivergedError(RuntimeError):
    """The loss exploded (the divergence rule above); the run stops as ``diverged``."""


def check_finite(name: str, value: float, where: str) -> None:
    if not math.isfinite(value):
        raise NonFiniteLossError(f"non-finite {name} at {where}: {value}")


@torch.no_grad()
def check_weights(model: torch.nn.Module, where: str) -> None:
    """NonFiniteLossError if any parameter or buffer holds NaN/inf (one sync; called before a checkpoint)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise NonFiniteLossError(f"non-finite weights at {where}")


def divergence(row: dict, first_loss: float | None, num_classes: int, factor: float | None) -> str | None:
    """Why the epoch's ``row`` counts as diverged (module docstring), or None."""
    if factor is None:
        return None
    chance_loss = math.log(max(2, num_classes))
    chance_acc = 2 * 100.0 / max(2, num_classes)
    loss = row["train_loss"]
    reference = max(first_loss if first_loss is not None else 0.0, chance_loss)
    if loss > factor * reference:
        bound = (f"max(the first epoch's {first_loss:.4g}, ln {num_classes} = {chance_loss:.3g})"
                 if first_loss is not None else f"ln {num_classes} = {chance_loss:.3g}")
        return f"training loss {loss:.4g} > {factor:g} x {bound} (divergence_factor={factor:g})"
    for split in ("train", "test"):
        acc, split_loss = row[f"{split}_acc"], row[f"{split}_loss"]
        if acc <= chance_acc and split_loss > factor * chance_loss:
            return (f"{split} accuracy {acc:.2f}% at chance (<= {chance_acc:.3g}%) with {split} loss "
                    f"{split_loss:.4g} > {factor:g} x ln {num_classes} (divergence_factor={factor:g})")
    return None
