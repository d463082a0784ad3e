"""The compiled path of the fused optimizers (HAM: Hyperbolic Aware Minimization, ICLR 2026): planning and calls.

For exactly ``torch.optim.SGD``, ``Adam`` and ``AdamW`` param groups without
amsgrad/capturable/fused/differentiable, with the learning rate and weight
decay given as numbers, a float32 parameter of one dense layout (contiguous or
channels-last) is updated by ONE kernel (``ham_kernels``) that does the base
update, HAM's factor when HAM covers it, and the engine's bookkeeping when it
was handed over (``bookkeeping``: gradient and weight masking, sign-flip
count), writing the base's own state (momentum_buffer, exp_avg, exp_avg_sq,
step). The kernels read ``p.grad`` in the same pass as the base update, before
anything can write into it (the base's ``step()`` never sees those params): no
copy of the raw gradient. The base optimizer's ``step()`` still runs for every
other parameter (biases, norms, parameters nothing asked for). For any other
base (SAM, RMSprop, ...) the base steps first, then one compiled HAM pass per
covered tensor (``ham_foreach.AfterBaseSteps``). Tensors the kernels cannot take
(not float32, odd layouts, lr given as a device tensor) use the foreach path.

Without HAM's factor (``FusedOptimizer``, HAM off) the SGD kernels round as
torch's CPU SGD does (each ``add(alpha=)`` one fused multiply-add), so a
HAM-off SGD run is bit for bit torch's; Adam(W) and the kernels with HAM's
factor reproduce the math up to float32 rounding (HAM's kernels keep the
arithmetic the recorded golden outputs were made with). Parameters with
sparse gradients get the base step only.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import kernel_cache as C
from .bookkeeping import StepBookkeeping, around
from .ham_kernels import KernelSpec

__all__ = ["FUSABLE", "FusedSteps"]

FUSABLE = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adam"}


class FusedSteps:
    """Mixed into the fused optimizers: the bookkeeping protocol and the fused step.

    Uses ``base_optimizer``, ``implementation``, ``variant``, ``clamp``, ``diagnostics_enabled``,
    ``_fusable`` (``FUSABLE`` of the base type), ``_compile_failed``, ``_book``, ``_layout_masks``,
    ``_adam_steps``, ``_diag_count`` and, from ``AfterBaseSteps``, the after-base path.
    """

    # -- the bookkeeping protocol (``bookkeeping``) -------------------------------------
    def bookkeeping_params(self) -> frozenset[Tensor]:
        """Params (with a gradient, now) whose next step runs in a fused kernel that can take a mask and count
        sign flips (``set_bookkeeping``); empty where there is none (foreach implementation, SAM, ...)."""
        if self._fusable is None or not self._use_compiled():
            return frozenset()
        params = []
        for group in self.param_groups:
            kind = self._group_kind(group)
            if kind is not None:
                params.extend(p for p in group["params"] if p.grad is not None and self._fusable_param(kind, p))
        return frozenset(params)

    def set_bookkeeping(self, book: StepBookkeeping | None) -> None:
        """Masks and flip slots for the next ``step()`` only (``bookkeeping.StepBookkeeping``)."""
        self._book = book

    def _take_book(self) -> StepBookkeeping | None:
        book, self._book = self._book, None
        return book

    def _use_compiled(self) -> bool:
        return (self.implementation != "foreach" and not self._compile_failed
                and not torch.compiler.is_compiling())

    # -- planning ------------------------------------------------------------------------
    def _group_kind(self, group) -> str | None:
        """The fused kind for a group's params, or None when its settings need the base's own step."""
        lr, wd = C.scalar(group["lr"]), C.scalar(group["weight_decay"])
        if lr is None or wd is None or group.get("differentiable", False):
            return None
        if self._fusable == "sgd" and C.scalar(group["momentum"]) is not None:
            return "sgd_momentum" if group["momentum"] != 0 else "sgd"
        if (self._fusable == "adam" and not group.get("amsgrad") and not group.get("capturable")
                and not group.get("fused") and not any(isinstance(b, Tensor) for b in group["betas"])):
            return "adam"
        return None

    def _state_tensors(self, kind: str, p: Tensor) -> tuple | None:
        """The base's per-element state the kernel updates (None entries: not created yet); None: not fusable."""
        state = self.state.get(p, {})
        if kind == "sgd_momentum":
            return (state.get("momentum_buffer"),)
        if kind == "adam":
            if state and (state["step"].device.type != "cpu" or "exp_avg" not in state):
                return None
            return state.get("exp_avg"), state.get("exp_avg_sq")
        return ()

    def _fusable_param(self, kind: str, p: Tensor) -> bool:
        extra = self._state_tensors(kind, p)
        return extra is not None and C.kernel_ready(p, p.grad, *extra)

    def _layout_mask(self, p: Tensor, mask: Tensor | None) -> Tensor | None:
        """``mask`` as uint8 in ``p``'s layout: a view of a bool mask of that layout, else a copy (cached per
        mask object and version)."""
        if mask is None:
            return None
        if mask.dtype == torch.bool and mask.device == p.device and mask.stride() == p.stride():
            return mask.view(torch.uint8)
        cached = self._layout_masks.get(p)
        if cached is None or cached[0] is not mask or cached[1] != mask._version:
            cached = self._layout_masks[p] = (mask, mask._version,
                                              torch.empty_like(p, dtype=torch.uint8).copy_(mask != 0))
        return cached[2]

    def _plan(self, book: StepBookkeeping | None):
        """(fused groups, after-base groups, bookkept params left to the fallback) for this step."""
        covered = {id(group): (alpha, beta, set(params)) for group, alpha, beta, params in self._covered_by_group()}
        booked = book.params() if book is not None else set()
        fused, rest, leftover = [], [], []
        for group in self.param_groups:
            kind = self._group_kind(group)
            alpha, beta, factor = covered.get(id(group), (0.0, 0.0, ()))
            items, others = [], []
            for p in group["params"]:
                in_factor, in_book = p in factor, p in booked
                if p.grad is None or not (in_factor or in_book):
                    continue
                mask = self._layout_mask(p, book.masks.get(p)) if in_book else None
                slot = book.flips.get(p) if in_book else None
                if kind is not None and self._fusable_param(kind, p) and C.kernel_ready(p, mask):
                    spec = C.spec_for(kind, factor=in_factor, mask=mask is not None, flips=slot is not None,
                                      diagnostics=in_factor and self.diagnostics_enabled, serial=C.serial(p))
                    items.append((p, spec, mask, slot))
                    continue
                if in_factor:
                    others.append(p)
                if in_book:
                    leftover.append(p)
            if items:
                fused.append((group, kind, alpha, beta, items))
            if others:
                rest.append((group, alpha, beta, others))
        return fused, rest, leftover

    # -- the step ------------------------------------------------------------------------
    def _ensure_compiled(self, keys) -> dict | None:
        """Compile (on small dummies, touching no real tensor) the kernels a step needs: {(spec, device): the
        spec to call} (``kernel_cache.warm``), or None when compiling failed and 'auto' falls back."""
        try:
            return {(spec, device): C.warm(spec, device) for spec, device in keys}
        except Exception as error:  # compiler missing or broken: only 'auto' may fall back
            if self.implementation == "compiled":
                raise
            self._compile_failed = True
            warnings.warn(f"{type(self).__name__}: torch.compile failed ({type(error).__name__}: {error}); "
                          "using the foreach implementation from now on", RuntimeWarning, stacklevel=3)
            return None

    def _call(self, spec: KernelSpec, p: Tensor, args: list, hyper: Tensor) -> None:
        """``args``: p, grad, state, mask and flip slot as flat tensors; the alias, hyper and acc follow."""
        spec = C.warm(spec, p.device)  # compiled already: the spec to call (a dict lookup)
        if spec.out_alias:
            args.append(C.output_alias(p))
        args.append(hyper)
        if spec.diagnostics:
            args.append(self._accumulator(p.device))
        C.call(spec, p, args)

    def _step_compiled(self, closure):
        """One step on the compiled path (module docstring): the closure first, then the base step for the
        params no kernel takes, the fused kernels, HAM's factor on covered params the kernels could not take."""
        book = self._take_book()
        if self._fusable is None:  # a base the kernels cannot fuse (SAM, RMSprop, ...): its step, then HAM
            # through compiled passes; with a book and a closure, the foreach path's bookkeeping order
            return self._step_foreach(closure, book=book, compiled=book is None or closure is None)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fused, rest, leftover = self._plan(book)
        specs = {(spec, p.device) for *_, items in fused for p, spec, _, _ in items}
        if specs and self._ensure_compiled(specs) is None:
            return self._step_foreach(None, loss, book)
        signs = self._signs(rest)
        hidden = [p for *_, items in fused for p, *_ in items]

        def run():
            grads = [p.grad for p in hidden]
            for p in hidden:  # the base's own step must not touch them
                p.grad = None
            try:
                self._base_step(rest)
            finally:
                for p, grad in zip(hidden, grads):
                    p.grad = grad
            for group, kind, alpha, beta, items in fused:
                if kind == "adam":
                    self._run_adam(group, alpha, beta, items)
                else:
                    self._run_sgd(group, alpha, beta, kind, items)
            if self.diagnostics_enabled:
                self._diag_count += sum(p.numel() for *_, items in fused for p, spec, _, _ in items if spec.factor)
            self._apply_after_base(rest, signs, compiled=True)

        if leftover:
            around(book, leftover, run)
        else:
            run()
        return loss

    def _run_sgd(self, group, alpha, beta, kind, items) -> None:
        values = [C.scalar(group["lr"]), C.scalar(group["weight_decay"]),
                  -1.0 if group.get("maximize", False) else 1.0, alpha, beta, self.clamp,
                  1.0 if self.variant == "hyp" else 0.0]
        if kind == "sgd_momentum":
            values += [float(group["momentum"]), 1.0 - float(group["dampening"]),
                       1.0 if group["nesterov"] else 0.0]
        hypers: dict[tuple[torch.device, bool], Tensor] = {}
        for p, spec, mask, slot in items:
            args = [C.flat(p), C.flat(p.grad)]
            first = False
            if kind == "sgd_momentum":
                state = self.state[p]
                buf = state.get("momentum_buffer")
                first = buf is None
                if first:
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                args.append(C.flat(buf))
            args += [C.flat(t) for t in (mask, slot) if t is not None]
            hyper = hypers.get((p.device, first))
            if hyper is None:
                extra = [1.0 if first else 0.0] if kind == "sgd_momentum" else []
                hyper = hypers[(p.device, first)] = C.hyper_tensor(values + extra, p.device)
            self._call(spec, p, args, hyper)

    def _run_adam(self, group, alpha, beta, items) -> None:
        lr, wd = C.scalar(group["lr"]), C.scalar(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        decoupled = group.get("decoupled_weight_decay", isinstance(self.base_optimizer, torch.optim.AdamW))
        steps, hypers = [], {}
        for p, spec, mask, slot in items:
            state = self.state[p]
            if len(state) == 0:
                scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
                state["step"] = torch.tensor(0.0, dtype=scalar_dtype)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            step = self._adam_step(state["step"]) + 1
            steps.append((state["step"], step))
            hyper = hypers.get((p.device, step))
            if hyper is None:
                values = [lr, 0.0 if decoupled else wd, -1.0 if group.get("maximize", False) else 1.0,
                          alpha, beta, self.clamp, 1.0 if self.variant == "hyp" else 0.0,
                          1.0 - lr * wd if decoupled else 1.0, 1.0 - beta1, beta2, 1.0 - beta2,
                          lr / (1.0 - beta1 ** step), (1.0 - beta2 ** step) ** 0.5, float(group["eps"])]
                hyper = hypers[(p.device, step)] = C.hyper_tensor(values, p.device)
            args = [C.flat(p), C.flat(p.grad), C.flat(state["exp_avg"]), C.flat(state["exp_avg_sq"])]
            args += [C.flat(t) for t in (mask, slot) if t is not None]
            self._call(spec, p, args, hyper)
        torch._foreach_add_([tensor for tensor, _ in steps], 1.0)
        for tensor, step in steps:  # the count as a number, valid while the tensor is not written elsewhere
            self._adam_steps[tensor] = (tensor._version, step)

    def _adam_step(self, tensor: Tensor) -> float:
        """Adam's step count (a CPU tensor), from the number this optimizer wrote last unless it changed since."""
        cached = self._adam_steps.get(tensor)
        if cached is not None and cached[0] == tensor._version:
            return cached[1]
        return tensor.item()
