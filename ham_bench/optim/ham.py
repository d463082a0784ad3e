"""HAM: Hyperbolic Aware Minimization (ICLR 2026) as a wrapper around any torch optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import ham_kernels as K
from .divergence import WARN_EVERY, WARN_EXPONENT, DivergenceWatch, HAMDivergenceWarning
from .ham_fused import CompiledSteps, kernel_ready, scalar
from .sam import SAM, closure_step
from .wrapper import WrappedOptimizer

__all__ = ["HAM", "HAMDivergenceWarning"]

VARIANTS = ("hyp_star", "hyp")
IMPLEMENTATIONS = ("auto", "compiled", "foreach")


def _check_strength(name: str, value: Any, where: str = "HAM") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


# torch optimizers whose step() never writes into p.grad, on any path (single-tensor, foreach,
# fused); tests/test_optim.py checks this against the installed torch for every flag combination.
_READS_GRAD_ONLY = tuple(cls for cls in (getattr(torch.optim, name, None) for name in (
    "Adadelta", "Adafactor", "Adagrad", "Adamax", "ASGD", "LBFGS", "Muon", "NAdam", "RAdam", "RMSprop", "Rprop"))
    if cls is not None)


def _may_write_grad(optimizer: Optimizer, group: dict[str, Any]) -> bool:
    """Whether ``optimizer``'s step may write into the p.grad of ``group``'s params (see HAM: raw gradient)."""
    kind = type(optimizer)
    if kind is SAM:  # SAM only reads p.grad; its base steps on it
        return _may_write_grad(optimizer.base_optimizer, group)
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


def _check_clamp(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"HAM: clamp must be a number > 0, got {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"HAM: clamp must be > 0 (math.inf disables it), got {value!r}")
    return float(value)


class HAM(CompiledSteps, WrappedOptimizer):
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
    persistent state.

    Coverage: parameters with ``ndim >= min_ndim`` (2: conv, linear, embedding
    weights) for which ``param_filter(p)`` is true (when given); a param group
    with ``ham=False`` is excluded entirely. Per-group overrides: keys
    ``alpha``/``beta`` (or ``ham_alpha``/``ham_beta``; the prefixed form is the
    only one read when the base optimizer itself uses ``alpha``/``beta``, as
    RMSprop does). A group whose alpha and beta are both 0 is a pure base step.

    Implementations (``implementation=``):

    * ``"compiled"`` (``ham_fused.py``, ``ham_kernels.py``): kernels built with
      ``torch.compile`` (dynamic shapes, compiled once per process, ~10-60 s on a
      small CPU; single-threaded variants for CPU tensors under 32768 elements).
      For exactly ``torch.optim.SGD``, ``Adam`` and ``AdamW`` groups without
      amsgrad/capturable/fused/differentiable, the base update and HAM run as ONE
      pass per float32 tensor, writing the base's own state (momentum_buffer,
      exp_avg, exp_avg_sq, step), while the base optimizer's ``step()`` still
      runs for every other parameter (biases, norms). For any other base (SAM,
      RMSprop, ...) the base steps first, then one compiled HAM pass per tensor.
      Tensors the kernels cannot take (not float32, odd layouts, lr given as a
      device tensor) use the foreach path. Measured on ResNet-50 shapes (CPU time,
      results/bench_optim.md): SGD+HAM 0.94x an SGD step, AdamW+HAM 0.84x an
      AdamW step. CUDA uses the same code (Triton) but was not exercised here.
    * ``"foreach"``: base ``step()``, then HAM as ``torch._foreach_*`` passes.
      Exact, no compiler needed, several passes over memory (1.75-2.6x a base
      step). HYP stores int8 signs (1 byte per covered weight) for the duration
      of the step.
    * ``"auto"`` (default): ``"compiled"``; falls back to ``"foreach"`` with a
      warning if compilation fails. Inside a ``torch.compile``'d region HAM always
      uses the foreach path and lets the outer compile fuse it.

    How HAM gets the raw gradient. The fused kernels read ``p.grad`` in the same
    pass as the base update, before anything can write into it (the base's
    ``step()`` never sees those params): no copy. Everywhere else HAM reads
    ``p.grad`` after the base step, so for a param group whose base may write into
    ``p.grad``, the covered params' gradients are swapped for copies while the
    base steps and put back afterwards: exact, one transient copy of those
    gradients, no host sync. Which bases may write (``_may_write_grad``; the
    torch part is checked against the installed torch by tests/test_optim.py):

    * ``torch.optim.SGD`` with momentum, nesterov, weight_decay == 0 and not
      maximize, on the multi-tensor path (``foreach=True``, or torch's default
      for non-CPU tensors): torch adds momentum * buf into p.grad in place
      (torch/optim/sgd.py, ``_multi_tensor_sgd``). With ``differentiable=True``,
      SGD, Adam and AdamW (``grad.addcmul_`` for a tensor weight_decay). No
      other path of these, and no path of Adadelta, Adafactor, Adagrad, Adamax,
      ASGD, LBFGS, Muon, NAdam, RAdam, RMSprop or Rprop.
    * SAM: whatever its base may (SAM itself only reads p.grad).
    * Any other optimizer (user classes, subclasses of torch's): always. A write
      cannot be undone, and telling afterwards whether one happened is not
      reliable (torch's fused kernels write through raw pointers without bumping
      ``p.grad._version``; a write may happen only on some steps), so HAM pays
      the copy rather than risk a wrong update.

    After a step, a covered param's ``p.grad`` is the tensor the caller left
    there, unchanged (torch's own multi-tensor SGD would leave g + momentum * buf;
    HAM's fused path never writes p.grad, so all HAM paths agree); params HAM
    does not cover keep whatever the base made of their gradients. With a
    closure and gradients to keep, HAM runs the closure itself first (as torch's
    optimizers and the fused path do) and calls the base without it.
    ``step(closure)`` over SAM runs SAM's own sequence through :meth:`first_step`
    and :meth:`second_step`, so HAM brackets the base step inside SAM (SAM's own
    step hooks do not run then). Another base that needs the closure inside its
    step (``requires_closure``) is handed it and must itself leave p.grad as the
    gradient its update used.

    The fused kernels reproduce torch's SGD/Adam(W) math up to float32 rounding
    (not bit for bit; a group with alpha = beta = 0 is torch's own step, bit for
    bit). Parameters with sparse gradients get the base step only.
    GradScaler: HAM does not claim ``_step_supports_amp_scaling``, so
    ``scaler.step(ham)`` unscales ``p.grad`` in place and skips ``ham.step()``
    entirely when it finds inf/NaN: neither the base step nor HAM applies, and
    HAM always sees unscaled gradients.

    Diagnostics (opt-in, ``diagnostics=True``; off by default because the
    in-kernel reductions add 15-20% to a fused step on CPU): during steps HAM
    accumulates, as device tensors and without host syncs, the sum and max of
    |exponent| and the number of covered weights whose exponent reached the
    clamp. :meth:`diagnostics` returns ``ham_mean_abs_exponent``,
    ``ham_clamp_fraction``, ``ham_max_abs_exponent``, ``ham_steps`` and is the
    only call that syncs.

    Divergence warning (``warn_exponent``, default 0.05; ``None`` turns it off;
    ``warn_every``, default 100): when the mean |exponent| per covered weight
    and step exceeds ``warn_exponent``, or an exponent is NaN/inf, HAM warns
    once with :class:`HAMDivergenceWarning`. It is checked at steps 1, 2, 4,
    ... below ``warn_every`` and then every ``warn_every`` steps (one host sync
    each, none on other steps), and whenever :meth:`diagnostics` is read;
    without diagnostics a check step recomputes that step's exponents from
    ``p.grad`` (one extra pass), never changing the update. Measured scales
    and the details: ``ham_bench/optim/divergence.py``.

    ``param_groups``, ``state`` and ``defaults`` are the base optimizer's own
    objects (also after ``load_state_dict``), so LR schedulers, GradScaler and
    code that edits ``opt.state[p]`` work on either object.
    """

    # GradScaler unscales p.grad in place and skips step() on inf/NaN (see class docstring).
    _step_supports_amp_scaling = False

    def __init__(self, optimizer: Optimizer, alpha: float = 200.0, beta: float = 1e-3,
                 variant: str = "hyp_star", clamp: float = 5.0,
                 param_filter: Callable[[Tensor], bool] | None = None,
                 implementation: str = "auto", diagnostics: bool = False, min_ndim: int = 2,
                 warn_exponent: float | None = WARN_EXPONENT, warn_every: int = WARN_EVERY):
        if not isinstance(optimizer, Optimizer):
            raise TypeError("HAM: optimizer must be a torch.optim.Optimizer instance, e.g. "
                            f"HAM(torch.optim.SGD(model.parameters(), lr=0.1)); got {type(optimizer).__name__}")
        if isinstance(optimizer, HAM):
            raise TypeError("HAM: optimizer is already wrapped in HAM")
        if variant not in VARIANTS:
            raise ValueError(f"HAM: variant must be one of {VARIANTS}, got {variant!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"HAM: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if param_filter is not None and not callable(param_filter):
            raise TypeError(f"HAM: param_filter must be callable(param) -> bool or None, got {param_filter!r}")
        if isinstance(min_ndim, bool) or not isinstance(min_ndim, int) or min_ndim < 0:
            raise ValueError(f"HAM: min_ndim must be an int >= 0, got {min_ndim!r}")
        self.base_optimizer = optimizer
        self.alpha = _check_strength("alpha", alpha)
        self.beta = _check_strength("beta", beta)
        self.clamp = _check_clamp(clamp)
        self.variant = variant
        self.implementation = implementation
        self.param_filter = param_filter
        self.min_ndim = min_ndim
        self.diagnostics_enabled = bool(diagnostics)
        self._divergence = DivergenceWatch(warn_exponent, warn_every)
        # Torch optimizers such as RMSprop use 'alpha' themselves: then only 'ham_alpha' overrides.
        self._group_keys = {
            "alpha": "alpha" not in optimizer.defaults,
            "beta": "beta" not in optimizer.defaults,
        }
        self._fusable = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam",
                         torch.optim.AdamW: "adam"}.get(type(optimizer))
        self._covered: dict[Tensor, bool] = {}
        self._compile_failed = False
        self._pending_signs: list | None = None
        self._diag_acc: dict[torch.device, Tensor] = {}
        self._diag_count = 0
        self._diag_steps = 0
        self._init_wrapper()
        for group in self.param_groups:
            self._check_group(group)
            for p in group["params"]:
                self._is_covered(p)

    def __repr__(self) -> str:
        return (f"HAM(variant={self.variant!r}, alpha={self.alpha}, beta={self.beta}, clamp={self.clamp}, "
                f"implementation={self.implementation!r}, diagnostics={self.diagnostics_enabled})\n"
                f"base: {self.base_optimizer!r}")

    # -- groups and coverage -----------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        if not isinstance(group.get("ham", True), bool):
            raise TypeError(f"HAM: param group key 'ham' must be a bool, got {group['ham']!r}")
        for name in ("alpha", "beta"):
            key = self._group_key(group, name)
            if key is not None:
                _check_strength(f"param group {key!r}", group[key])

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

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._check_group(param_group)
        self.base_optimizer.add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self._is_covered(p)

    # -- state dict: the base's, plus HAM's settings under "ham" --------------------------
    _state_key = "ham"

    def _wrapper_state(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "clamp": self.clamp, "variant": self.variant,
                "min_ndim": self.min_ndim}

    def _load_wrapper_state(self, settings: dict[str, Any] | None) -> None:
        if settings is None:
            return
        alpha = _check_strength("alpha", settings["alpha"])
        beta = _check_strength("beta", settings["beta"])
        clamp = _check_clamp(settings["clamp"])
        if settings["variant"] not in VARIANTS:
            raise ValueError(f"HAM: state dict variant must be one of {VARIANTS}, got {settings['variant']!r}")
        self.alpha, self.beta, self.clamp, self.variant = alpha, beta, clamp, settings["variant"]
        self.min_ndim = int(settings.get("min_ndim", self.min_ndim))
        self._covered.clear()

    def _after_load_state_dict(self) -> None:
        for group in self.param_groups:
            self._check_group(group)

    # -- diagnostics -------------------------------------------------------------------
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
        ``check``: hand them to the divergence warning (class docstring).
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

    # -- step --------------------------------------------------------------------------
    def _use_compiled(self) -> bool:
        return (self.implementation != "foreach" and not self._compile_failed
                and not torch.compiler.is_compiling())

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Base optimizer step, then HAM on the covered weights. Returns the closure's loss."""
        if closure is not None and isinstance(self.base_optimizer, SAM):
            return closure_step(self, closure)  # SAM's sequence, through first_step / second_step below
        counted = self._diag_count
        if self._use_compiled():
            loss = self._step_compiled(closure)
        else:
            loss = self._step_foreach(closure)
        if self._diag_count != counted:
            self._diag_steps += 1
        self._divergence.after_step(self, stacklevel=4)  # the caller, past torch.no_grad's wrapper
        return loss

    def _covered_by_group(self) -> list[tuple[dict[str, Any], float, float, list[Tensor]]]:
        plan = []
        for group in self.param_groups:
            active, alpha, beta = self._group_settings(group)
            if active:
                plan.append((group, alpha, beta, [p for p in group["params"] if self._is_covered(p)]))
        return plan

    def covered_numel(self) -> int:
        """How many weights HAM multiplies per step: covered params of active groups (for FLOPs and reports)."""
        return sum(p.numel() for _, _, _, params in self._covered_by_group() for p in params)

    def _signs(self, plan) -> list[list[Tensor]] | None:
        if self.variant != "hyp":
            return None
        return [[torch.sign(p).to(torch.int8) for p in params] for _, _, _, params in plan]

    def _step_foreach(self, closure, loss=None):
        plan = self._covered_by_group()
        signs = self._signs(plan)
        base_loss = self._base_step(plan, closure)
        self._apply_after_base(plan, signs, compiled=False)
        return loss if loss is not None else base_loss

    def _base_step(self, plan, closure=None, step: Callable[[], Any] | None = None):
        """The base's step (or ``step()``), keeping the raw gradients of ``plan``'s params for HAM.

        Where the base may write into p.grad (``_may_write_grad``), each covered gradient is
        swapped for a copy while the base steps and put back after. A closure then runs
        first, here, and the base steps without it. Returns the loss.
        """
        base = self.base_optimizer
        shielded = [params for group, _, _, params in plan if _may_write_grad(base, group)]
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
                lr = scalar(lr) if lr.device.type == "cpu" else lr
            maximize = bool(group.get("maximize", False))
            group_signs = signs[index] if signs is not None else None
            by_device: dict[torch.device, tuple[list, list, list]] = {}
            kernel_items = []
            for i, p in enumerate(params):
                grad = p.grad
                if grad is None or grad.is_sparse:
                    continue
                sign = group_signs[i] if group_signs is not None else None
                if (compiled and not isinstance(lr, Tensor) and kernel_ready(p, grad)
                        and (sign is None or sign.stride() == p.stride())):
                    kernel_items.append((p, grad, sign))
                else:
                    entry = by_device.setdefault(p.device, ([], [], []))
                    entry[0].append(p)
                    entry[1].append(grad)
                    entry[2].append(sign)
            if kernel_items and not self._run_ham_kernels(kernel_items, lr, alpha, beta, maximize):
                for p, grad, sign in kernel_items:
                    entry = by_device.setdefault(p.device, ([], [], []))
                    entry[0].append(p)
                    entry[1].append(grad)
                    entry[2].append(sign)
            for device, (ps, grads, sgns) in by_device.items():
                K.foreach_ham_(ps, grads, sgns if group_signs is not None else None, lr=lr, alpha=alpha,
                               beta=beta, clamp=self.clamp, maximize=maximize,
                               acc=self._accumulator(device))
                if self.diagnostics_enabled:
                    self._diag_count += sum(p.numel() for p in ps)
            if self.diagnostics_enabled:
                self._diag_count += sum(p.numel() for p, _, _ in kernel_items)

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
