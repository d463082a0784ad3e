"""HAM's settings per param group and which parameters it covers (HAM: Hyperbolic Aware Minimization, ICLR 2026).

Coverage: parameters with ``ndim >= min_ndim`` (2: conv, linear, embedding
weights) for which ``param_filter(p)`` is true (when given); a param group
with ``ham=False`` is excluded entirely. Per-group overrides: keys
``alpha``/``beta`` (or ``ham_alpha``/``ham_beta``; the prefixed form is the
only one read when the base optimizer itself uses ``alpha``/``beta``, as
RMSprop does). A group whose alpha and beta are both 0 is a pure base step.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

__all__ = ["CoveredGroups", "check_clamp", "check_strength"]


def check_strength(name: str, value: Any, where: str = "HAM") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_clamp(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"HAM: clamp must be a number > 0, got {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"HAM: clamp must be > 0 (math.inf disables it), got {value!r}")
    return float(value)


class CoveredGroups:
    """Mixed into HAM: group settings and coverage. Uses ``alpha``, ``beta``, ``min_ndim``, ``param_filter``,
    ``_group_keys`` (which unprefixed keys are HAM's) and ``_covered`` (a per-parameter cache)."""

    def _check_group(self, group: dict[str, Any]) -> None:
        if not isinstance(group.get("ham", True), bool):
            raise TypeError(f"HAM: param group key 'ham' must be a bool, got {group['ham']!r}")
        for name in ("alpha", "beta"):
            key = self._group_key(group, name)
            if key is not None:
                check_strength(f"param group {key!r}", group[key])

    def _group_key(self, group: dict[str, Any], name: str) -> str | None:
        if "ham_" + name in group:
            return "ham_" + name
        if self._group_keys[name] and name in group:
            return name
        return None

    def _group_settings(self, group: dict[str, Any]) -> tuple[bool, float, float]:
        """(active, alpha, beta) for a param group."""
        alpha_key = self._group_key(group, "alpha")
        beta_key = self._group_key(group, "beta")
        alpha = group[alpha_key] if alpha_key else self.alpha
        beta = group[beta_key] if beta_key else self.beta
        active = group.get("ham", True) and not (alpha == 0 and beta == 0)
        return active, alpha, beta

    def _is_covered(self, p: Tensor) -> bool:
        covered = self._covered.get(p)
        if covered is None:
            covered = p.dim() >= self.min_ndim and (self.param_filter is None or bool(self.param_filter(p)))
            self._covered[p] = covered
        return covered

    def _covered_by_group(self) -> list[tuple[dict[str, Any], float, float, list[Tensor]]]:
        """(group, alpha, beta, covered params) for every group where HAM is active."""
        plan = []
        for group in self.param_groups:
            active, alpha, beta = self._group_settings(group)
            if active:
                plan.append((group, alpha, beta, [p for p in group["params"] if self._is_covered(p)]))
        return plan

    def covered_numel(self) -> int:
        """How many weights HAM multiplies per step: covered params of active groups (for FLOPs and reports)."""
        return sum(p.numel() for _, _, _, params in self._covered_by_group() for p in params)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._check_group(param_group)
        self.base_optimizer.add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self._is_covered(p)
