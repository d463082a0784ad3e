"""HAM after the base optimizer's own step (HAM: Hyperbolic Aware Minimization, ICLR 2026): the foreach path.

The base's ``step()`` runs, then every covered weight is multiplied by HAM's
factor: as ``torch._foreach_*`` passes (``foreach_ham_``: exact, no compiler,
traceable by ``torch.compile``, one float exponent per covered weight while it
runs), or by compiled per-tensor ``ham`` kernels when the base cannot be fused
(SAM, RMSprop, ...).

How HAM gets the raw gradient here: HAM reads ``p.grad`` after the base step,
so for a param group whose base may write into ``p.grad`` (``may_write_grad``)
the covered params' gradients are swapped for copies while the base steps and
put back afterwards: exact, one transient copy of those gradients, no host
sync. HYP keeps int8 signs (1 byte per covered weight) for the duration of
the step.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import kernel_cache as C
from .bookkeeping import StepBookkeeping, around, masked_gradients
from .sam import SAM

__all__ = ["AfterBaseSteps", "foreach_ham_", "may_write_grad"]

# torch optimizers whose step() never writes into p.grad, on any path (single-tensor, foreach,
# fused); tests/test_optim.py checks this against the installed torch for every flag combination.
_READS_GRAD_ONLY = tuple(cls for cls in (getattr(torch.optim, name, None) for name in (
    "Adadelta", "Adafactor", "Adagrad", "Adamax", "ASGD", "LBFGS", "Muon", "NAdam", "RAdam", "RMSprop", "Rprop"))
    if cls is not None)


def may_write_grad(optimizer: Optimizer, group: dict[str, Any]) -> bool:
    """Whether ``optimizer``'s step may write into the p.grad of ``group``'s params (see HAM: raw gradient)."""
    kind = type(optimizer)
    if kind is SAM:  # SAM only reads p.grad; its base steps on it
        return may_write_grad(optimizer.base_optimizer, group)
    if kind in _READS_GRAD_ONLY:
        return False
    if group.get("differentiable", False):  # torch/optim/{sgd,adam}.py: grad.addcmul_ for a tensor weight_decay
        return True
    if kind in (torch.optim.Adam, torch.optim.AdamW):
        return False
    if kind is torch.optim.SGD:
        # _multi_tensor_sgd: torch._foreach_add_(device_grads, bufs, alpha=momentum) adds into p.grad
        # itself unless weight decay or maximize already made device_grads a new list of tensors.
        momentum, weight_decay = group["momentum"], group["weight_decay"]  # tensors: assume the worst, no sync
        if not ((isinstance(momentum, Tensor) or momentum != 0) and group["nesterov"]
                and not group.get("maximize", False) and (isinstance(weight_decay, Tensor) or weight_decay == 0)):
            return False
        if group.get("foreach") is None and group.get("fused") is None:
            # torch's default picks the multi-tensor path for CUDA/XPU/... tensors, never for CPU ones
            return any(p.device.type != "cpu" for p in group["params"])
        return bool(group.get("foreach"))
    return True  # an optimizer HAM does not know: assume it may


class AfterBaseSteps:
    """Mixed into the fused optimizers: the base step, then HAM's factor on the covered params it updated.

    Uses ``base_optimizer``, ``variant``, ``clamp``, ``requires_closure``, ``_covered_by_group()`` (empty
    without HAM), ``_accumulator(device)``, ``diagnostics_enabled`` and ``_diag_count``.
    """

    def _signs(self, plan) -> list[list[Tensor]] | None:
        if self.variant != "hyp":
            return None
        return [[torch.sign(p).to(torch.int8) for p in params] for _, _, _, params in plan]

    def _step_foreach(self, closure, loss=None, book: StepBookkeeping | None = None, compiled: bool = False):
        """The base's step, then HAM's factor on the covered weights (``compiled``: through the compiled
        HAM passes), the bookkeeping of ``book`` around it."""
        if book is not None and closure is not None and self.requires_closure:
            closure = masked_gradients(book, closure)  # SAM's passes: each one's gradients masked
        elif book is not None and closure is not None:  # gradients come from the closure: mask them after it
            with torch.enable_grad():
                loss = closure()
            closure = None
        plan = self._covered_by_group()
        signs = self._signs(plan)

        def run():
            base_loss = self._base_step(plan, closure)
            self._apply_after_base(plan, signs, compiled=compiled)
            return base_loss

        base_loss = around(book, book.params(), run) if book is not None else run()
        return loss if loss is not None else base_loss

    def _base_step(self, plan, closure=None, step: Callable[[], Any] | None = None):
        """The base's step (or ``step()``), keeping the raw gradients of ``plan``'s params for HAM.

        Where the base may write into p.grad (``may_write_grad``), each covered gradient is
        swapped for a copy while the base steps and put back after. A closure then runs
        first, here, and the base steps without it. Returns the loss.
        """
        base = self.base_optimizer
        shielded = [params for group, _, _, params in plan if may_write_grad(base, group)]
        loss = None
        if shielded and closure is not None:
            if self.requires_closure:  # the base makes its own gradients; it must keep them (as SAM does)
                shielded = []
            else:
                with torch.enable_grad():
                    loss = closure()
                closure = None
        kept = [(p, p.grad) for params in shielded for p in params if p.grad is not None and not p.grad.is_sparse]
        for p, grad in kept:
            p.grad = grad.clone()
        try:
            if step is not None:
                step()
            else:
                base_loss = base.step(closure) if closure is not None else base.step()
                loss = base_loss if loss is None else loss
        finally:
            for p, grad in kept:
                p.grad = grad
        return loss

    def _apply_after_base(self, plan, signs, compiled: bool) -> None:
        """HAM factor on covered params (with a gradient) whose base step already ran."""
        for index, (group, alpha, beta, params) in enumerate(plan):
            lr = group["lr"]
            if isinstance(lr, Tensor) and not torch.compiler.is_compiling():
                lr = C.scalar(lr) if lr.device.type == "cpu" else lr
            maximize = bool(group.get("maximize", False))
            group_signs = signs[index] if signs is not None else None
            by_device: dict[torch.device, tuple[list, list, list]] = {}
            kernel_items = []
            for i, p in enumerate(params):
                grad = p.grad
                if grad is None or grad.is_sparse:
                    continue
                sign = group_signs[i] if group_signs is not None else None
                if compiled and not isinstance(lr, Tensor) and C.kernel_ready(p, grad, sign):
                    kernel_items.append((p, grad, sign))
                else:
                    by_device.setdefault(p.device, ([], [], []))
                    for entry, value in zip(by_device[p.device], (p, grad, sign)):
                        entry.append(value)
            if kernel_items and not self._run_ham_kernels(kernel_items, lr, alpha, beta, maximize):
                for p, grad, sign in kernel_items:
                    by_device.setdefault(p.device, ([], [], []))
                    for entry, value in zip(by_device[p.device], (p, grad, sign)):
                        entry.append(value)
            for device, (ps, grads, sgns) in by_device.items():
                foreach_ham_(ps, grads, sgns if group_signs is not None else None, lr=lr, alpha=alpha,
                             beta=beta, clamp=self.clamp, maximize=maximize, acc=self._accumulator(device))
                if self.diagnostics_enabled:
                    self._diag_count += sum(p.numel() for p in ps)
            if self.diagnostics_enabled:
                self._diag_count += sum(p.numel() for p, _, _ in kernel_items)

    def _run_ham_kernels(self, items, lr: float, alpha: float, beta: float, maximize: bool) -> bool:
        kind = "ham" if self.variant == "hyp_star" else "ham_signed"
        specs = {p: C.spec_for(kind, diagnostics=self.diagnostics_enabled, serial=C.serial(p)) for p, _, _ in items}
        if self._ensure_compiled({(spec, p.device) for p, spec in specs.items()}) is None:
            return False
        values = [lr, -1.0 if maximize else 1.0, alpha, beta, self.clamp]
        hypers: dict[torch.device, Tensor] = {}
        for p, grad, sign in items:
            hyper = hypers.get(p.device)
            if hyper is None:
                hyper = hypers[p.device] = C.hyper_tensor(values, p.device)
            args = [C.flat(p), C.flat(grad)] + ([C.flat(sign)] if sign is not None else [])
            self._call(specs[p], p, args, hyper)
        return True


def foreach_ham_(params: list[Tensor], grads: list[Tensor], signs: list[Tensor] | None, *,
                 lr, alpha: float, beta: float, clamp: float, maximize: bool,
                 acc: Tensor | None = None) -> None:
    """Multiply ``params`` in place by the HAM factor, with torch._foreach_* ops.

    ``signs``: int8 signs recorded before the base step (HYP), or None to use the
    signs of ``params`` as they are now (HYP*). ``acc``: optional float64[3]
    diagnostics accumulator on the params' device (see ``ham_kernels._accumulate``).
    No host synchronisation.
    """
    if not params:
        return
    if signs is None:
        exponents = torch._foreach_sign(params)
        torch._foreach_mul_(exponents, grads)
    else:
        exponents = [g * s.to(g.dtype) for g, s in zip(grads, signs)]
    if maximize:
        torch._foreach_neg_(exponents)
    torch._foreach_mul_(exponents, alpha)
    torch._foreach_add_(exponents, beta)
    torch._foreach_mul_(exponents, -lr)
    if acc is not None:
        _foreach_accumulate(acc, exponents, clamp)
    if clamp != math.inf:
        torch._foreach_clamp_min_(exponents, -clamp)
        torch._foreach_clamp_max_(exponents, clamp)
    torch._foreach_exp_(exponents)
    torch._foreach_mul_(params, exponents)


def _foreach_accumulate(acc: Tensor, raw: list[Tensor], clamp: float) -> None:
    magnitudes = torch._foreach_abs(raw)
    clamped = torch.stack([(m >= clamp).sum() for m in magnitudes]).sum().to(acc.dtype)
    if clamp != math.inf:
        torch._foreach_clamp_max_(magnitudes, clamp)
    total = torch.stack(torch._foreach_norm(magnitudes, 1)).sum().to(acc.dtype)
    largest = torch.stack([m.amax() for m in magnitudes]).amax().to(acc.dtype)
    acc.copy_(torch.stack([acc[0] + total, acc[1] + clamped, torch.maximum(acc[2], largest)]))
