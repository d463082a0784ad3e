"""SAM: Sharpness-Aware Minimization (Foret et al., ICLR 2021), with ASAM's adaptive variant."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .wrapper import WrappedOptimizer

__all__ = ["SAM"]

_GRAD_NORM_EPS = 1e-12


def _check_rho(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"SAM: rho must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"SAM: rho must be a finite number >= 0, got {value!r}")
    return float(value)


class SAM(WrappedOptimizer):
    """Sharpness-Aware Minimization (SAM, Foret et al., ICLR 2021) around a base optimizer.

    Each update climbs to w + e(w) and applies the base optimizer there:

        first_step:  e = rho * g / ||g||          (adaptive=False, SAM)
                     e = rho * w^2 g / ||w g||     (adaptive=True, ASAM, Kwon et al.
                                                    ICML 2021, with eta = 0)
                     w <- w + e
        (user: forward + backward at w + e)
        second_step: w <- w exactly (restored from a copy), then base.step() with
                     the gradient taken at w + e, which stays in p.grad.

    ``||.||`` is one L2 norm over every parameter with a gradient, across all
    groups. ``rho`` and ``adaptive`` may be overridden per param group (keys
    ``rho``, ``adaptive``). ASAM usually wants a larger rho (e.g. 0.5 to 2).

    Use, after ``loss.backward()`` at w, either the two calls
    ``first_step(zero_grad=True)`` / ``second_step()`` around your second
    forward+backward, or ``step(closure)``, where ``closure`` runs a full forward
    and backward and returns the loss: ``step`` perturbs, calls it at w + e,
    restores and steps (``requires_closure`` is True so trainers know).

    ``param_groups`` and ``state`` are the base optimizer's own objects, so
    ``sam.state[p]`` holds e.g. the momentum buffer (``defaults`` is the base's
    plus rho and adaptive). The copy of w taken in ``first_step`` lives in a
    buffer reused across steps (one extra copy of the parameters) and is not
    part of the state dict: save checkpoints after ``second_step``.
    ``state_dict()`` is the base's state dict (groups carry ``rho``/``adaptive``)
    plus SAM's defaults under ``"sam"``. No host syncs.
    Wrap in :class:`ham_bench.optim.HAM` to add HAM after the base step.
    """

    def __init__(self, params, base_optimizer_cls: type[Optimizer], rho: float = 0.05,
                 adaptive: bool = False, **base_kwargs):
        if not (isinstance(base_optimizer_cls, type) and issubclass(base_optimizer_cls, Optimizer)):
            raise TypeError("SAM: base_optimizer_cls must be a torch.optim.Optimizer class such as "
                            f"torch.optim.SGD, got {base_optimizer_cls!r}")
        if issubclass(base_optimizer_cls, SAM):
            raise TypeError("SAM: base_optimizer_cls must not be SAM itself")
        rho = _check_rho(rho)
        if not isinstance(adaptive, bool):
            raise TypeError(f"SAM: adaptive must be a bool, got {adaptive!r}")
        self.base_optimizer = base_optimizer_cls(params, **base_kwargs)
        self._sam_defaults = {"rho": rho, "adaptive": adaptive}
        for group in self.param_groups:
            self._init_sam_group(group)
        self._backup: dict[Tensor, Tensor] = {}
        self._perturbed: list[Tensor] | None = None
        self._init_wrapper()

    def _init_sam_group(self, group: dict[str, Any]) -> None:
        group.setdefault("rho", self._sam_defaults["rho"])
        group.setdefault("adaptive", self._sam_defaults["adaptive"])
        _check_rho(group["rho"])
        if not isinstance(group["adaptive"], bool):
            raise TypeError(f"SAM: param group 'adaptive' must be a bool, got {group['adaptive']!r}")

    @property
    def defaults(self) -> dict[str, Any]:
        """The base optimizer's defaults plus rho and adaptive (a new dict: read-only)."""
        return {**self.base_optimizer.defaults, **self._sam_defaults}

    @property
    def requires_closure(self) -> bool:
        return True

    @property
    def rho(self) -> float:
        return self._sam_defaults["rho"]

    @property
    def adaptive(self) -> bool:
        return self._sam_defaults["adaptive"]

    def __repr__(self) -> str:
        return f"SAM(rho={self.rho}, adaptive={self.adaptive})\nbase: {self.base_optimizer!r}"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._init_sam_group(param_group)
        self.base_optimizer.add_param_group(param_group)

    _state_key = "sam"

    def _wrapper_state(self) -> dict[str, Any]:
        return dict(self._sam_defaults)

    def _load_wrapper_state(self, settings: dict[str, Any] | None) -> None:
        if settings is not None:
            adaptive = settings["adaptive"]
            if not isinstance(adaptive, bool):
                raise TypeError(f"SAM: state dict 'adaptive' must be a bool, got {adaptive!r}")
            self._sam_defaults = {"rho": _check_rho(settings["rho"]), "adaptive": adaptive}

    def _after_load_state_dict(self) -> None:
        for group in self.param_groups:
            self._init_sam_group(group)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move every parameter with a gradient to w + e(w); keep an exact copy of w."""
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                groups.append((group, params, [p.grad for p in params]))
        if not groups:
            self._perturbed = []
            return
        norms = []
        for group, params, grads in groups:
            scaled = torch._foreach_mul(grads, torch._foreach_abs(params)) if group["adaptive"] else grads
            norms.extend(torch._foreach_norm(scaled, 2))
        device = norms[0].device
        grad_norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
        perturbed = []
        for group, params, grads in groups:
            scale = group["rho"] / (grad_norm + _GRAD_NORM_EPS)
            by_device: dict[torch.device, tuple[list, list]] = {}
            for p, g in zip(params, grads):
                entry = by_device.setdefault(p.device, ([], []))
                entry[0].append(p)
                entry[1].append(g)
            for dev, (ps, gs) in by_device.items():
                backups = []
                for p in ps:
                    backup = self._backup.get(p)
                    if backup is None or backup.shape != p.shape or backup.dtype != p.dtype:
                        backup = self._backup[p] = torch.empty_like(p)
                    backups.append(backup)
                torch._foreach_copy_(backups, ps)
                step = torch._foreach_mul(gs, scale.to(dev))
                if group["adaptive"]:
                    torch._foreach_mul_(step, ps)
                    torch._foreach_mul_(step, ps)
                torch._foreach_add_(ps, step)
                perturbed.extend(ps)
        self._perturbed = perturbed
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w exactly, then the base optimizer's step with the gradient at w + e."""
        if self._perturbed is None:
            raise RuntimeError("SAM.second_step called without first_step")
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, [self._backup[p] for p in self._perturbed])
        self._perturbed = None
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Full SAM update. Returns the loss the closure returned at w + e.

        Usual use: ``loss.backward()`` at w, then ``step(closure)`` where
        ``closure`` runs forward + backward (at the perturbed weights) and returns
        the loss. If no parameter has a gradient yet, ``closure`` is first called
        at w to get one (torch's closure convention), so it runs twice.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that runs forward + backward and returns the loss "
                             "(or call first_step() and second_step() around your own backward)")
        return closure_step(self, closure)


def closure_step(optimizer, closure: Callable[[], Any]):
    """``SAM.step(closure)`` as calls on ``optimizer``: a SAM, or a wrapper with SAM's
    ``first_step``/``second_step`` (HAM, which so brackets the base step SAM's second_step runs)."""
    if not any(p.grad is not None for group in optimizer.param_groups for p in group["params"]):
        with torch.enable_grad():
            closure()
    optimizer.first_step(zero_grad=True)
    with torch.enable_grad():
        loss = closure()
    optimizer.second_step()
    return loss
