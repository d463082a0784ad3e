"""HAM's diagnostics as a meter: the exponent statistics HAM accumulates on the device, read once per epoch.

Row keys (when the optimizer is HAM with diagnostics on): ``ham_mean_abs_exponent``,
``ham_clamp_fraction``, ``ham_max_abs_exponent``, ``ham_steps``
(``HAM.diagnostics``). Every ``log_every`` steps (and at the epoch's last
step) the meter peeks at the statistics so far (one host sync) and warns,
once per epoch, when more than ``warn_clamp_fraction`` of the exponents sit at
the clamp: alpha is then too large for the gradient scale. HAM's own
divergence check (``ham_bench.optim.divergence``) is deferred to those reads
too, so no other step syncs with the device.
"""

from __future__ import annotations

import logging

from ham_bench.metrics.meter import Meter

log = logging.getLogger("ham_bench")


class HamMeter(Meter):
    name = "ham"

    def __init__(self, optimizer, steps_per_epoch: int, log_every: int = 20, warn_clamp_fraction: float = 0.01,
                 warn: bool = True):
        self.optimizer = optimizer
        self.steps_per_epoch = int(steps_per_epoch)
        self.log_every = int(log_every)
        self.warn_clamp_fraction = float(warn_clamp_fraction)
        self.warn = warn
        self.warned = False
        if callable(getattr(optimizer, "defer_divergence_checks", None)):
            optimizer.defer_divergence_checks()

    def on_step(self, record) -> None:
        index = record.step % self.steps_per_epoch
        if not ((index + 1) % self.log_every == 0 or index + 1 == self.steps_per_epoch):
            return
        if callable(getattr(self.optimizer, "check_divergence", None)):
            self.optimizer.check_divergence()
        if self.warned:
            return
        fraction = self.optimizer.diagnostics(reset=False).get("ham_clamp_fraction", 0.0)
        if fraction > self.warn_clamp_fraction:
            self.warned = True
            if self.warn:
                log.warning("HAM: %.1f%% of exponents sit at the clamp (epoch %d, step %d): alpha is too large "
                            "for this gradient scale and the run is likely to diverge; try a smaller ham.alpha "
                            "or optimizer.lr", 100 * fraction, record.step // self.steps_per_epoch + 1, index + 1)

    def epoch_report(self, epoch: int, weights) -> dict:
        self.warned = False
        return self.optimizer.diagnostics(reset=True)
