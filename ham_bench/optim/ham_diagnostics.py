"""HAM's exponent diagnostics (HAM: Hyperbolic Aware Minimization, ICLR 2026), accumulated on the device.

Opt-in (``HAM(diagnostics=True)``; off by default because the in-kernel
reductions add 15-20% to a fused step on CPU): during steps HAM accumulates,
as device tensors and without host syncs, the sum and max of |exponent| and
the number of covered weights whose exponent reached the clamp, in one
float64[3] accumulator per device. :meth:`Diagnostics.diagnostics` returns
``ham_mean_abs_exponent``, ``ham_clamp_fraction``, ``ham_max_abs_exponent``,
``ham_steps`` and is the only call that syncs.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Diagnostics"]


class Diagnostics:
    """Mixed into HAM. Uses ``diagnostics_enabled``, ``_diag_acc`` (device -> accumulator), ``_diag_count``
    (covered weight updates so far, counted on the host from tensor sizes) and ``_diag_steps``."""

    def _accumulator(self, device: torch.device) -> Tensor | None:
        if not self.diagnostics_enabled:
            return None
        acc = self._diag_acc.get(device)
        if acc is None:
            acc = self._diag_acc[device] = torch.zeros(3, dtype=torch.float64, device=device)
        return acc

    def diagnostics(self, reset: bool = True, check: bool = True) -> dict[str, float]:
        """Exponent statistics since the last reset; the only call that syncs with the device.

        Returns {} unless constructed with ``diagnostics=True`` (or
        ``diagnostics_enabled`` set) and some covered weight was updated. Keys:
        ``ham_mean_abs_exponent`` (mean |exponent| over covered weight updates),
        ``ham_clamp_fraction`` (fraction of those whose exponent hit +-clamp),
        ``ham_max_abs_exponent`` and ``ham_steps``. A clamp fraction above 0 or a
        mean |exponent| near the clamp means alpha is too large for this
        gradient scale and lr (weights grow by up to e^clamp per step).
        ``check``: hand them to the divergence warning (``divergence``).
        """
        result: dict[str, float] = {}
        if self._diag_count > 0 and self._diag_acc:
            totals = torch.stack([acc.cpu() for acc in self._diag_acc.values()])
            total_abs, clamped, largest = totals[:, 0].sum().item(), totals[:, 1].sum().item(), totals[:, 2].max().item()
            result = {
                "ham_mean_abs_exponent": total_abs / self._diag_count,
                "ham_clamp_fraction": clamped / self._diag_count,
                "ham_max_abs_exponent": largest,
                "ham_steps": float(self._diag_steps),
            }
            if check:
                self._divergence.check(self, result, stacklevel=3)
        if reset:
            for acc in self._diag_acc.values():
                acc.zero_()
            self._diag_count = 0
            self._diag_steps = 0
        return result
