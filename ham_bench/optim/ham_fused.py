"""The compiled path of HAM (Hyperbolic Aware Minimization, ICLR 2026): planning and kernel calls.

``CompiledSteps`` is mixed into :class:`ham_bench.optim.HAM`; it uses HAM's
settings (variant, clamp, diagnostics) and the base optimizer's state. Kernels
take plain 1-D tensors aliasing each parameter's memory and one float32
``hyper`` tensor of scalars, so neither tensor shapes nor LR schedules
recompile them. Every kernel a step needs is compiled on dummies before any
real tensor is touched, so a failed compile can still fall back cleanly.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import Tensor

from . import compile_time
from . import ham_kernels as K


def scalar(value: Any) -> float | None:
    """A Python float for a number or a CPU scalar tensor; None for a device tensor."""
    if isinstance(value, Tensor):
        if value.device.type != "cpu" or value.numel() != 1:
            return None
        return float(value.item())
    return float(value)


def _flat(t: Tensor) -> Tensor:
    """A plain 1-D tensor over a dense tensor's memory (contiguous or channels-last).

    Not a view: dynamo guards on a view's base, which would recompile the kernels
    for every distinct parameter shape.
    """
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


def _dense(t: Tensor) -> bool:
    return (t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
            or (t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)))


def kernel_ready(p: Tensor, *others: Tensor | None) -> bool:
    """Whether the compiled kernels can take p (and its grad/state) as flat aliases of one layout."""
    if p.dtype != torch.float32 or p.device.type not in ("cpu", "cuda") or p.numel() < 2:
        return False
    if not _dense(p):
        return False
    for t in others:
        if t is None:
            continue
        if (t.layout != torch.strided or t.dtype != p.dtype or t.device != p.device
                or t.shape != p.shape or t.stride() != p.stride()):
            return False
    return True


class CompiledSteps:
    """Fused base+HAM kernels for torch SGD/Adam/AdamW, compiled HAM passes for other bases."""

    def _run_ham_kernels(self, items, lr: float, alpha: float, beta: float, maximize: bool) -> bool:
        name = "ham" if self.variant == "hyp_star" else "ham_signed"
        if not self._ensure_compiled({(name, p.device, self._serial(p)) for p, _, _ in items}):
            return False
        values = [lr, -1.0 if maximize else 1.0, alpha, beta, self.clamp]
        hypers: dict[torch.device, Tensor] = {}
        for p, grad, sign in items:
            hyper = hypers.get(p.device)
            if hyper is None:
                hyper = hypers[p.device] = _hyper_tensor(values, p.device)
            args = [_flat(p), _flat(grad)]
            if sign is not None:
                args.append(_flat(sign))
            args.append(hyper)
            self._call(name, p, args)
        return True

    # -- compiled kernels --------------------------------------------------------------
    @staticmethod
    def _serial(p: Tensor) -> bool:
        return p.device.type == "cpu" and p.numel() < K.PARALLEL_MIN_NUMEL

    def _call(self, name: str, p: Tensor, args: list) -> None:
        acc = self._accumulator(p.device)
        if acc is not None:
            args.append(acc)
        K.compiled_kernel(name, acc is not None, self._serial(p))(*args)
        # the kernel wrote through an alias: tell autograd that p changed in place
        torch.autograd.graph.increment_version(p)

    def _ensure_compiled(self, keys) -> bool:
        """Compile (on small dummies, touching no real tensor) the kernels a step needs."""
        try:
            for name, device, serial in keys:
                _warm(name, device, serial, self.diagnostics_enabled)
        except Exception as error:  # compiler missing or broken: only 'auto' may fall back
            if self.implementation == "compiled":
                raise
            self._compile_failed = True
            warnings.warn(f"HAM: torch.compile failed ({type(error).__name__}: {error}); "
                          "using the foreach implementation from now on", RuntimeWarning, stacklevel=3)
            return False
        return True

    def _step_compiled(self, closure):
        """One step on the compiled path.

        Other bases: base step, then compiled HAM passes. SGD/Adam/AdamW: the
        closure (if any) runs first; the kernels' parameters hide their grads
        from the base step, which then updates only the rest; the fused kernels
        update the hidden ones (base update + HAM); the rest get HAM passes.
        """
        if self._fusable is None:
            plan = self._covered_by_group()
            signs = self._signs(plan)
            loss = self._base_step(plan, closure)
            self._apply_after_base(plan, signs, compiled=True)
            return loss
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._covered_by_group()
        fused, rest = [], []
        for group, alpha, beta, params in plan:
            kernel, items, others = self._fused_items(group, params)
            if items:
                fused.append((group, alpha, beta, kernel, items))
            if others:
                rest.append((group, alpha, beta, others))
        if fused and not self._ensure_compiled({(kernel, p.device, self._serial(p))
                                                for _, _, _, kernel, items in fused for p in items}):
            return self._step_foreach(None, loss)
        signs = self._signs(rest)
        hidden = [p for *_, items in fused for p in items]
        grads = [p.grad for p in hidden]
        for p in hidden:
            p.grad = None
        try:
            self._base_step(rest)
        finally:
            for p, grad in zip(hidden, grads):
                p.grad = grad
        for group, alpha, beta, kernel, items in fused:
            if kernel == "adam":
                self._run_adam(group, alpha, beta, items)
            else:
                self._run_sgd(group, alpha, beta, kernel, items)
        if self.diagnostics_enabled:
            self._diag_count += sum(p.numel() for p in hidden)
        self._apply_after_base(rest, signs, compiled=True)
        return loss

    def _fused_items(self, group, params):
        """Split a group's covered params with grads into (kernel, fused, after-base)."""
        lr = scalar(group["lr"])
        wd = scalar(group["weight_decay"])
        kernel = None
        if lr is not None and wd is not None and not group.get("differentiable", False):
            if self._fusable == "sgd" and scalar(group["momentum"]) is not None:
                kernel = "sgd_momentum" if group["momentum"] != 0 else "sgd"
            elif (self._fusable == "adam" and not group.get("amsgrad") and not group.get("capturable")
                  and not group.get("fused") and not any(isinstance(b, Tensor) for b in group["betas"])):
                kernel = "adam"
        fused, others = [], []
        for p in params:
            if p.grad is None:
                continue
            state = self.state.get(p, {})
            if kernel == "sgd_momentum":
                extra = (state.get("momentum_buffer"),)
            elif kernel == "adam":
                if state and (state["step"].device.type != "cpu" or "exp_avg" not in state):
                    others.append(p)
                    continue
                extra = (state.get("exp_avg"), state.get("exp_avg_sq"))
            else:
                extra = ()
            if kernel is not None and kernel_ready(p, p.grad, *extra):
                fused.append(p)
            else:
                others.append(p)
        return kernel, fused, others

    def _run_sgd(self, group, alpha, beta, kernel, params) -> None:
        values = [scalar(group["lr"]), scalar(group["weight_decay"]),
                  -1.0 if group.get("maximize", False) else 1.0, alpha, beta, self.clamp,
                  1.0 if self.variant == "hyp" else 0.0]
        if kernel == "sgd_momentum":
            values += [float(group["momentum"]), 1.0 - float(group["dampening"]),
                       1.0 if group["nesterov"] else 0.0]
        hypers: dict[tuple[torch.device, bool], Tensor] = {}
        for p in params:
            args = [_flat(p), _flat(p.grad)]
            first = False
            if kernel == "sgd_momentum":
                state = self.state[p]
                buf = state.get("momentum_buffer")
                first = buf is None
                if first:
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                args.append(_flat(buf))
            hyper = hypers.get((p.device, first))
            if hyper is None:
                extra = [1.0 if first else 0.0] if kernel == "sgd_momentum" else []
                hyper = hypers[(p.device, first)] = _hyper_tensor(values + extra, p.device)
            args.append(hyper)
            self._call(kernel, p, args)

    def _run_adam(self, group, alpha, beta, params) -> None:
        lr, wd = scalar(group["lr"]), scalar(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        decoupled = group.get("decoupled_weight_decay", isinstance(self.base_optimizer, torch.optim.AdamW))
        steps, hypers = [], {}
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
                state["step"] = torch.tensor(0.0, dtype=scalar_dtype)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            step = state["step"].item() + 1
            steps.append(state["step"])
            hyper = hypers.get((p.device, step))
            if hyper is None:
                values = [lr, 0.0 if decoupled else wd, -1.0 if group.get("maximize", False) else 1.0,
                          alpha, beta, self.clamp, 1.0 if self.variant == "hyp" else 0.0,
                          1.0 - lr * wd if decoupled else 1.0, 1.0 - beta1, beta2, 1.0 - beta2,
                          lr / (1.0 - beta1 ** step), (1.0 - beta2 ** step) ** 0.5, float(group["eps"])]
                hyper = hypers[(p.device, step)] = _hyper_tensor(values, p.device)
            args = [_flat(p), _flat(p.grad), _flat(state["exp_avg"]), _flat(state["exp_avg_sq"]), hyper]
            self._call("adam", p, args)
        torch._foreach_add_(steps, 1.0)


_KERNEL_ARITY = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "ham": 0, "ham_signed": 1}
_HYPER_LENGTH = {"sgd": len(K.SGD_HYPER), "sgd_momentum": len(K.SGD_MOMENTUM_HYPER),
                 "adam": len(K.ADAM_HYPER), "ham": len(K.HAM_HYPER), "ham_signed": len(K.HAM_HYPER)}
_WARMED: set[tuple[str, str, bool, bool]] = set()


def _hyper_tensor(values: list[float], device: torch.device) -> Tensor:
    hyper = torch.tensor(values, dtype=torch.float32)
    if device.type == "cuda":
        hyper = hyper.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        hyper = hyper.to(device)
    return hyper


def _warm(name: str, device: torch.device, serial: bool, diagnostics: bool) -> None:
    """Compile a kernel variant on dummies; serial reductions specialise on size <= 4096, so two sizes."""
    key = (name, str(device), serial, diagnostics)
    if key in _WARMED:
        return
    started = time.perf_counter()
    for numel in ((64, 8192) if serial else (4 * K.PARALLEL_MIN_NUMEL,)):
        args = [torch.zeros(numel, device=device) for _ in range(2 + _KERNEL_ARITY[name])]
        if name == "ham_signed":
            args[2] = torch.zeros(numel, dtype=torch.int8, device=device)
        args.append(torch.zeros(_HYPER_LENGTH[name], device=device))
        if diagnostics:
            args.append(torch.zeros(3, dtype=torch.float64, device=device))
        K.compiled_kernel(name, diagnostics, serial)(*args)
    compile_time.add(time.perf_counter() - started)  # reported apart from the epoch's throughput
    _WARMED.add(key)
