"""Is HAM diverging? One warning from the library itself, and the words for error messages.

HAM multiplies each covered weight by ``exp(exponent)`` with
``exponent = clamp(-lr * (alpha * sign * g + beta), -clamp, clamp)``, so
``|exponent|`` (about ``lr * alpha * |g|``) is the relative change HAM makes to
a weight in one step. Its mean over the covered weights and steps tells the
scale a run is at. Measured on Fashion-MNIST (the small CNN at lr 0.05, and
LeNet-300-100):

* healthy: the fmnist recipe (alpha 20) 0.012 in epoch 1 and 0.0009 in epoch 2
  (83 % with ``dataset.subset=3000 epochs=2``); the MLP at lr 0.05, alpha 20:
  0.0013;
* harmful: alpha 200 on that CNN, 0.113 (max 5.0 = the clamp, but only 0.39 %
  of the exponents at the clamp) and 40 points lost; the MLP at lr 0.1,
  momentum 0.9, alpha 200: 0.02 at step 1, 0.22 at step 4, NaN loss at step 9.

The signal (:class:`DivergenceWatch`): the mean ``|exponent|`` above
``warn_exponent`` (HAM's argument, default ``WARN_EXPONENT`` = 0.05, between
the two groups above), or any non-finite exponent (NaN/inf gradients or
weights). It warns once per HAM instance with :class:`HAMDivergenceWarning`
(a ``RuntimeWarning``; filter it with the ``warnings`` module, or pass
``warn_exponent=None`` to HAM to turn the check off).

When it is checked, so that no other step syncs with the device:

* check steps: HAM's steps 1, 2, 4, 8, ... below ``warn_every`` (default
  ``WARN_EVERY`` = 100), then every ``warn_every`` steps: one host sync each;
* with ``diagnostics=True`` the check reads HAM's accumulated statistics
  (the mean since the last ``diagnostics(reset=True)``), at check steps and
  every time :meth:`HAM.diagnostics` is called (it syncs anyway: the trainer
  reads it every ``log_every`` steps);
* with diagnostics off, a check step recomputes that step's exponents from
  ``p.grad`` (which HAM's step leaves as it found it) and the weights' signs
  after the step (exactly HYP*'s sign, since ``exp`` keeps signs; for HYP an
  approximation where the base step flipped a sign): one extra pass over the
  covered weights per check step, none otherwise. The update itself is not
  touched, so a run's numbers do not depend on the check.

A training loop that reads from the device every few steps anyway can take
the checks into its own reads (the trainer does: ``HamMeter``):
:meth:`HAM.defer_divergence_checks` makes a check step only mark a check as
due, and :meth:`HAM.check_divergence` (called at the loop's reads) runs it, so
no step outside those reads syncs. With diagnostics off, a deferred check step
still computes its exponent statistics (the extra pass) on the device, and with
diagnostics on it copies the accumulated ones; the read takes them in step
order, so messages name the check steps and their statistics as before.

Steps taken inside a ``torch.compile``'d region are not checked (nothing is
read from the device there).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["HAMDivergenceWarning", "DivergenceWatch", "WARN_EXPONENT", "WARN_EVERY", "check_settings", "describe",
           "warning_of"]

WARN_EXPONENT = 0.05
WARN_EVERY = 100
MAX_PENDING = 16  # deferred checks kept until the caller reads them (a caller that never reads keeps the latest)


class HAMDivergenceWarning(RuntimeWarning):
    """HAM's exponents say alpha (or lr) is too large for the gradient scale, or they became NaN/inf."""


def check_settings(warn_exponent: Any, warn_every: Any) -> tuple[float | None, int]:
    """The two HAM arguments, checked (ValueError/TypeError naming the argument and what is allowed)."""
    if warn_exponent is not None:
        if isinstance(warn_exponent, bool) or not isinstance(warn_exponent, (int, float)):
            raise TypeError(f"HAM: warn_exponent must be a number > 0 or None (no check), got {warn_exponent!r}")
        if math.isnan(warn_exponent) or warn_exponent <= 0:
            raise ValueError(f"HAM: warn_exponent must be > 0, or None to turn the check off; got {warn_exponent!r}")
        warn_exponent = float(warn_exponent)
    if isinstance(warn_every, bool) or not isinstance(warn_every, int) or warn_every < 1:
        raise ValueError(f"HAM: warn_every must be an int >= 1 (steps between checks), got {warn_every!r}")
    return warn_exponent, warn_every


def _lr(ham) -> float | None:
    for group in ham.param_groups:
        lr = group["lr"]
        return float(lr.item()) if isinstance(lr, Tensor) else float(lr)
    return None


def _stats_text(stats: dict) -> str:
    lr = f", lr {stats['lr']:g}" if "lr" in stats else ""
    return (f"mean |exponent| {stats['ham_mean_abs_exponent']:.3g} (max {stats['ham_max_abs_exponent']:.3g}, "
            f"{100 * stats['ham_clamp_fraction']:.2f}% at the clamp{lr})")


@torch.no_grad()
def probe_on_device(ham) -> tuple[list[Tensor], int] | None:
    """This step's exponent statistics, recomputed from p.grad and the weights' signs, left on the device:
    ([float64[3] per device: sum |exponent|, count at the clamp, max |exponent|], weights counted); no sync."""
    totals: dict[torch.device, Tensor] = {}
    count = 0
    for group, alpha, beta, params in ham._covered_by_group():
        lr = group["lr"]
        grad_sign = -1.0 if group.get("maximize", False) else 1.0
        for p in params:
            grad = p.grad
            if grad is None or grad.is_sparse or p.numel() == 0:
                continue
            exponent = (-lr * (alpha * grad_sign * torch.sign(p) * grad + beta)).clamp(-ham.clamp, ham.clamp).abs()
            acc = totals.get(p.device)
            if acc is None:
                acc = totals[p.device] = torch.zeros(3, dtype=torch.float64, device=p.device)
            acc[0] += exponent.sum(dtype=torch.float64)
            acc[1] += (exponent >= ham.clamp).sum()
            acc[2] = torch.maximum(acc[2], exponent.max().double())
            count += p.numel()
    return (list(totals.values()), count) if count else None


def read_probe(probed: tuple[list[Tensor], int] | None, steps: int = 1) -> dict[str, float]:
    """Statistics left on the device (``probe_on_device``'s, or HAM's diagnostics accumulators over
    ``steps`` steps) as numbers (one host sync)."""
    if probed is None or not probed[0] or not probed[1]:
        return {}
    totals, count = probed
    values = torch.stack([acc.cpu() for acc in totals])
    return {"ham_mean_abs_exponent": values[:, 0].sum().item() / count,
            "ham_clamp_fraction": values[:, 1].sum().item() / count,
            "ham_max_abs_exponent": values[:, 2].max().item(), "ham_steps": float(steps)}


def probe(ham) -> dict[str, float]:
    """This step's exponent statistics, recomputed from p.grad and the weights' signs (one host sync)."""
    return read_probe(probe_on_device(ham))


def _lr_now(ham):
    """The first group's lr as it is now, without a host read (a tensor lr is copied)."""
    for group in ham.param_groups:
        lr = group["lr"]
        return lr.detach().clone() if isinstance(lr, Tensor) else float(lr)
    return None


class DivergenceWatch:
    """Warns once when HAM's mean |exponent| exceeds ``threshold`` or is not finite (module docstring)."""

    def __init__(self, threshold: float | None = WARN_EXPONENT, every: int = WARN_EVERY):
        self.threshold, self.every = check_settings(threshold, every)
        self.steps = 0
        self.deferred = False  # check steps leave their statistics on the device; the caller reads them (check_due)
        self.due = False
        self.pending: list[tuple[int, Any, Any]] = []  # (step, lr, probe_on_device's result), diagnostics off
        self.message: str | None = None          # the warning, once given (a run's summary records it)
        self.last: dict[str, float] | None = None          # the latest statistics checked
        self.last_finite: dict[str, float] | None = None   # ... the latest finite ones, and at which step
        self.last_finite_step = 0

    @property
    def enabled(self) -> bool:
        return self.threshold is not None

    def is_check_step(self, step: int) -> bool:
        return step % self.every == 0 or (step < self.every and step & (step - 1) == 0)

    def after_step(self, ham, stacklevel: int = 2) -> None:
        """Called by HAM after each of its steps; syncs only on check steps.

        ``stacklevel``: the caller's frame for the warning, counted from this function (as ``warnings.warn``).
        """
        if torch.compiler.is_compiling():  # inside a compiled region: no host reads, no warnings
            return
        self.steps += 1
        if not self.enabled or self.message is not None or not self.is_check_step(self.steps):
            return
        if self.deferred:
            self.due = True
            # this step's statistics, computed or copied now on the device, read at the caller's read
            if ham.diagnostics_enabled:
                kept = ([acc.clone() for acc in ham._diag_acc.values()], ham._diag_count), ham._diag_steps
            else:
                kept = probe_on_device(ham), 1
            self.pending = self.pending[-(MAX_PENDING - 1):] + [(self.steps, _lr_now(ham), *kept)]
            return
        self._check_now(ham, stacklevel + 1)

    def check_due(self, ham, stacklevel: int = 2) -> None:
        """Read the checks deferred check steps made due, if any, in step order (one host sync then; none
        otherwise). With diagnostics on, each is the accumulated statistics as they stood at its step."""
        pending, self.pending = self.pending, []
        if not self.due or torch.compiler.is_compiling():
            return
        self.due = False
        span = " (the mean since the diagnostics were last reset)" if ham.diagnostics_enabled else ""
        for step, lr, probed, steps in pending:
            lr = float(lr.item()) if isinstance(lr, Tensor) else lr
            self.check(ham, read_probe(probed, steps), f"at HAM step {step}{span}", stacklevel=stacklevel + 1,
                       step=step, lr=lr)

    def _check_now(self, ham, stacklevel: int) -> None:
        if ham.diagnostics_enabled:
            self.check(ham, ham.diagnostics(reset=False, check=False), stacklevel=stacklevel + 1)
        else:
            self.check(ham, probe(ham), f"at HAM step {self.steps}", stacklevel=stacklevel + 1)

    def check(self, ham, stats: dict[str, float], span: str | None = None, stacklevel: int = 2,
              step: int | None = None, lr: float | None = None) -> None:
        """Look at exponent statistics already read from the device (of HAM step ``step`` at learning rate
        ``lr``; default: now); warn once if they say divergence."""
        if not stats:
            return
        lr = _lr(ham) if lr is None else lr
        self.last = stats = {**stats, "lr": lr}
        mean = stats["ham_mean_abs_exponent"]
        finite = math.isfinite(mean) and math.isfinite(stats["ham_max_abs_exponent"])
        if finite:
            self.last_finite, self.last_finite_step = stats, self.steps if step is None else step
        if not self.enabled or self.message is not None:
            return
        span = span or f"at HAM step {self.steps} (the mean since the diagnostics were last reset)"
        settings = f"alpha={ham.alpha:g}, lr={lr:g}"
        if not finite:
            before = (f"; the last finite check (step {self.last_finite_step}) read {_stats_text(self.last_finite)}"
                      if self.last_finite is not None else "")
            self.message = (f"HAM: non-finite exponents {span} ({settings}): the gradients or weights are NaN/inf, "
                            f"training has diverged{before}. Exponents above warn_exponent={self.threshold:g} "
                            f"mean alpha or lr is too large for this gradient scale")
        elif mean > self.threshold:
            suggestion = (f"; alpha about {ham.alpha * 0.01 / mean:.2g} would put it near 0.01" if ham.alpha > 0
                          else "")
            self.message = (f"HAM: the mean |exponent| per weight and step is {mean:.3g} {span} (max "
                            f"{stats['ham_max_abs_exponent']:.3g}, {100 * stats['ham_clamp_fraction']:.2f}% at the "
                            f"clamp), above warn_exponent={self.threshold:g} ({settings}): alpha is too large for "
                            f"this gradient scale (or lr too large) and the run is likely to diverge or lose "
                            f"accuracy (|exponent| ~ lr*alpha*|g|; healthy runs sit near 0.001-0.01){suggestion} "
                            f"(HAM(..., warn_exponent=None) turns this check off)")
        else:
            return
        warnings.warn(self.message, HAMDivergenceWarning, stacklevel=stacklevel + 1)


def describe(optimizer) -> str:
    """HAM's alpha and exponent statistics for an error message ('' when the optimizer is not HAM)."""
    watch = getattr(optimizer, "_divergence", None)
    if not isinstance(watch, DivergenceWatch):
        return ""
    stats = optimizer.diagnostics(reset=False, check=False) if optimizer.diagnostics_enabled else {}
    stats = stats or watch.last
    parts = [f"HAM alpha={optimizer.alpha:g}, beta={optimizer.beta:g}"]
    if stats:
        parts.append(f"{_stats_text(stats)} {'this epoch' if optimizer.diagnostics_enabled else 'at the last check'}")
        if watch.last_finite is not None and watch.last_finite is not stats:
            parts.append(f"the last finite check (step {watch.last_finite_step}): {_stats_text(watch.last_finite)}")
    elif not optimizer.diagnostics_enabled:
        parts.append("no exponent statistics (ham.diagnostics=true records them)")
    limit = watch.threshold if watch.threshold is not None else WARN_EXPONENT
    parts.append(f"a mean |exponent| above {limit:g} means alpha is too large for this gradient scale: "
                 f"try a smaller ham.alpha or optimizer.lr")
    return " (" + "; ".join(parts) + ")"


def warning_of(optimizer) -> str | None:
    """The divergence warning HAM gave (None if it gave none, or the optimizer is not HAM)."""
    watch = getattr(optimizer, "_divergence", None)
    return watch.message if isinstance(watch, DivergenceWatch) else None
