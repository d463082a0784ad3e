"""HAM: Hyperbolic Aware Minimization (ICLR 2026) as a wrapper around any torch optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .fused import IMPLEMENTATIONS, FusedOptimizer
from .ham_diagnostics import Diagnostics
from .ham_groups import CoveredGroups, check_clamp, check_strength
from .divergence import WARN_EVERY, WARN_EXPONENT, DivergenceWatch, HAMDivergenceWarning
from .sam import SAM, closure_step

__all__ = ["HAM", "HAMDivergenceWarning", "IMPLEMENTATIONS", "VARIANTS"]

VARIANTS = ("hyp_star", "hyp")


class HAM(CoveredGroups, Diagnostics, FusedOptimizer):
    """Hyperbolic Aware Minimization (HAM, ICLR 2026) around any torch optimizer.

    After the base optimizer's step, every covered weight is multiplied by

        exp(clamp(-lr * (alpha * sign * g + beta), -clamp, clamp))

    with ``g`` the raw gradient: ``p.grad`` as the base step received it (for SAM:
    the gradient taken at the perturbed point that SAM's second step hands its
    base; negated if the group has ``maximize=True``), whatever the base then does
    to ``p.grad``, and ``lr`` the group's current learning rate.
    ``variant="hyp_star"`` (default) takes the sign of the weight after the base
    step; ``"hyp"`` the sign before it. Exact zeros stay zero; HAM never flips a
    sign itself. ``beta`` is a decoupled multiplicative decay on covered weights,
    added on top of the base optimizer's own weight decay. Neither variant keeps
    persistent state. Coverage and per-group overrides (``alpha``/``beta``,
    ``ham_alpha``/``ham_beta``, ``ham=False``, ``min_ndim``, ``param_filter``):
    ``ham_groups``.

    Implementations (``implementation=``):

    * ``"compiled"`` (``ham_fused``, ``ham_kernels``, ``kernel_cache``): kernels built
      with ``torch.compile`` (dynamic shapes, compiled once per process, ~10-60 s on
      a small CPU). For ``torch.optim.SGD``, ``Adam`` and ``AdamW`` the base update
      and HAM run as ONE pass per float32 tensor; for other bases the base steps
      first, then one compiled HAM pass per tensor. Measured on ResNet-50 shapes:
      results/bench_optim.md. CUDA uses the same code (Triton).
    * ``"foreach"`` (``ham_foreach``): base ``step()``, then HAM as
      ``torch._foreach_*`` passes. Exact, no compiler needed, several passes over
      memory.
    * ``"auto"`` (default): ``"compiled"``; falls back to ``"foreach"`` with a
      warning if compilation fails. Inside a ``torch.compile``'d region HAM always
      uses the foreach path and lets the outer compile fuse it.

    How HAM gets the raw gradient: the fused kernels read ``p.grad`` before
    anything can write into it; elsewhere HAM reads it after the base step and
    shields it with a transient copy where the base may write into it
    (``ham_foreach.may_write_grad``; the torch part is checked against the
    installed torch by tests/test_optim.py). After a step, a covered param's
    ``p.grad`` is the tensor the caller left there, unchanged; params HAM does not
    cover keep whatever the base made of their gradients. With a closure and
    gradients to keep, HAM runs the closure itself first (as torch's optimizers
    and the fused path do) and calls the base without it. ``step(closure)`` over
    SAM runs SAM's own sequence through :meth:`first_step` and :meth:`second_step`,
    so HAM brackets the base step inside SAM (SAM's own step hooks do not run
    then). Another base that needs the closure inside its step
    (``requires_closure``) is handed it and must itself leave p.grad as the
    gradient its update used.

    The fused kernels reproduce torch's SGD/Adam(W) math up to float32 rounding
    (a group with alpha = beta = 0 is torch's own step, bit for bit). Parameters
    with sparse gradients get the base step only. GradScaler: HAM does not claim
    ``_step_supports_amp_scaling``, so ``scaler.step(ham)`` unscales ``p.grad`` in
    place and skips ``ham.step()`` entirely when it finds inf/NaN: neither the base
    step nor HAM applies, and HAM always sees unscaled gradients.

    A training engine may hand HAM masks to enforce and sign flips to count in
    the same kernels (``bookkeeping``; ``FusedOptimizer``, which HAM extends, does
    this with HAM off); without it a step does none of that. Diagnostics
    (``diagnostics=True``): ``ham_diagnostics``.

    Divergence warning (``warn_exponent``, default 0.05; ``None`` turns it off;
    ``warn_every``, default 100): when the mean |exponent| per covered weight
    and step exceeds ``warn_exponent``, or an exponent is NaN/inf, HAM warns
    once with :class:`HAMDivergenceWarning`. It is checked at steps 1, 2, 4,
    ... below ``warn_every`` and then every ``warn_every`` steps (one host sync
    each, none on other steps), and whenever :meth:`diagnostics` is read;
    without diagnostics a check step recomputes that step's exponents from
    ``p.grad`` (one extra pass), never changing the update. A loop that syncs
    every few steps anyway may :meth:`defer_divergence_checks` and call
    :meth:`check_divergence` at its reads (the trainer does). Measured scales
    and the details: ``ham_bench/optim/divergence.py``.

    ``param_groups``, ``state`` and ``defaults`` are the base optimizer's own
    objects (also after ``load_state_dict``), so LR schedulers, GradScaler and
    code that edits ``opt.state[p]`` work on either object.
    """

    # GradScaler unscales p.grad in place and skips step() on inf/NaN (see class docstring).
    _step_supports_amp_scaling = False
    _state_key = "ham"

    def __init__(self, optimizer: Optimizer, alpha: float = 200.0, beta: float = 1e-3,
                 variant: str = "hyp_star", clamp: float = 5.0,
                 param_filter: Callable[[Tensor], bool] | None = None,
                 implementation: str = "auto", diagnostics: bool = False, min_ndim: int = 2,
                 warn_exponent: float | None = WARN_EXPONENT, warn_every: int = WARN_EVERY):
        self._init_fused(optimizer, implementation)
        if variant not in VARIANTS:
            raise ValueError(f"HAM: variant must be one of {VARIANTS}, got {variant!r}")
        if param_filter is not None and not callable(param_filter):
            raise TypeError(f"HAM: param_filter must be callable(param) -> bool or None, got {param_filter!r}")
        if isinstance(min_ndim, bool) or not isinstance(min_ndim, int) or min_ndim < 0:
            raise ValueError(f"HAM: min_ndim must be an int >= 0, got {min_ndim!r}")
        self.alpha = check_strength("alpha", alpha)
        self.beta = check_strength("beta", beta)
        self.clamp = check_clamp(clamp)
        self.variant = variant
        self.param_filter = param_filter
        self.min_ndim = min_ndim
        self.diagnostics_enabled = bool(diagnostics)
        self._divergence = DivergenceWatch(warn_exponent, warn_every)
        # Torch optimizers such as RMSprop use 'alpha' themselves: then only 'ham_alpha' overrides.
        self._group_keys = {"alpha": "alpha" not in optimizer.defaults, "beta": "beta" not in optimizer.defaults}
        self._covered: dict[Tensor, bool] = {}
        self._pending_signs: list | None = None
        self._diag_acc: dict[torch.device, Tensor] = {}
        for group in self.param_groups:
            self._check_group(group)
            for p in group["params"]:
                self._is_covered(p)

    def __repr__(self) -> str:
        return (f"HAM(variant={self.variant!r}, alpha={self.alpha}, beta={self.beta}, clamp={self.clamp}, "
                f"implementation={self.implementation!r}, diagnostics={self.diagnostics_enabled})\n"
                f"base: {self.base_optimizer!r}")

    # -- state dict: the base's, plus HAM's settings under "ham" --------------------------
    def _wrapper_state(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "clamp": self.clamp, "variant": self.variant,
                "min_ndim": self.min_ndim}

    def _load_wrapper_state(self, settings: dict[str, Any] | None) -> None:
        if settings is None:
            return
        alpha = check_strength("alpha", settings["alpha"])
        beta = check_strength("beta", settings["beta"])
        clamp = check_clamp(settings["clamp"])
        if settings["variant"] not in VARIANTS:
            raise ValueError(f"HAM: state dict variant must be one of {VARIANTS}, got {settings['variant']!r}")
        self.alpha, self.beta, self.clamp, self.variant = alpha, beta, clamp, settings["variant"]
        self.min_ndim = int(settings.get("min_ndim", self.min_ndim))
        self._covered.clear()

    def _after_load_state_dict(self) -> None:
        for group in self.param_groups:
            self._check_group(group)

    # -- divergence warning (``divergence``) ---------------------------------------------
    def defer_divergence_checks(self) -> None:
        """Leave the divergence checks to the caller's reads: a check step only marks a check as due, and
        :meth:`check_divergence` runs it (for a loop that syncs every few steps anyway, as the trainer does)."""
        self._divergence.deferred = True

    def check_divergence(self) -> None:
        """Run the divergence check a check step made due (deferred checks); nothing, and no sync, otherwise."""
        self._divergence.check_due(self, stacklevel=2)

    # -- step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Base optimizer step, then HAM on the covered weights. Returns the closure's loss."""
        if closure is not None and isinstance(self.base_optimizer, SAM):
            return closure_step(self, closure)  # SAM's sequence, through first_step / second_step below
        counted = self._diag_count
        loss = self._fused_step(closure)
        if self._diag_count != counted:
            self._diag_steps += 1
        self._divergence.after_step(self, stacklevel=4)  # the caller, past torch.no_grad's wrapper
        return loss

    # -- two-step bases (SAM) ----------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """For a two-step base such as SAM: record HYP signs, then the base's first_step."""
        if not hasattr(self.base_optimizer, "first_step"):
            raise AttributeError(f"HAM.first_step needs a two-step base optimizer such as SAM, "
                                 f"got {type(self.base_optimizer).__name__}")
        plan = self._covered_by_group()
        self._pending_signs = [plan, self._signs(plan)]
        self.base_optimizer.first_step(zero_grad=zero_grad)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """The base's second_step (its real update), then HAM with the gradient it used."""
        if self._pending_signs is None:
            raise RuntimeError("HAM.second_step called without first_step")
        plan, signs = self._pending_signs
        self._pending_signs = None
        self._base_step(plan, step=lambda: self.base_optimizer.second_step(zero_grad=False))
        counted = self._diag_count
        self._apply_after_base(plan, signs, compiled=self._use_compiled())
        if self._diag_count != counted:
            self._diag_steps += 1
        self._divergence.after_step(self, stacklevel=4)
        if zero_grad:
            self.zero_grad()
