"""Update math for HAM (Hyperbolic Aware Minimization, ICLR 2026).

Two implementations of the same update, used by :class:`ham_bench.optim.HAM`:

* ``foreach_ham_``: the multiplicative step as a few ``torch._foreach_*`` passes
  over the covered weights, applied after the base optimizer's own ``step()``.
  Exact, needs no compiler, traceable by ``torch.compile``; it allocates one
  float exponent per covered weight while it runs.
* Per-tensor kernels compiled with ``torch.compile(dynamic=True)`` on flat 1-D
  views. ``sgd_update``/``sgd_momentum_update``/``adam_update`` do the base
  update of ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` AND the HAM factor in one
  pass over memory (the HAM step is then nearly free); ``ham_update`` /
  ``ham_update_signed`` apply only the HAM factor after any other base step.
  All hyper-parameters, the learning rate included, arrive in one small float32
  tensor, so LR schedules and per-parameter step counts never recompile.

The update, with g the raw gradient (negated when the base group maximizes):

    exponent = clamp(-lr * (alpha * sign * g + beta), -clamp, clamp)
    theta    = theta_half * exp(exponent)

``sign`` is sign(theta_half) for HYP* and sign(theta before the base step) for HYP.
"""

from __future__ import annotations

import math
import types

import torch
from torch import Tensor

__all__ = [
    "SGD_HYPER",
    "SGD_MOMENTUM_HYPER",
    "ADAM_HYPER",
    "HAM_HYPER",
    "KERNELS",
    "PARALLEL_MIN_NUMEL",
    "compiled_kernel",
    "foreach_ham_",
]

# Order of the scalars packed into each kernel's ``hyper`` tensor.
SGD_HYPER = ("lr", "weight_decay", "grad_sign", "alpha", "beta", "clamp", "sign_before")
SGD_MOMENTUM_HYPER = (
    "lr", "weight_decay", "grad_sign", "alpha", "beta", "clamp", "sign_before",
    "momentum", "one_minus_dampening", "nesterov", "first_step",
)
ADAM_HYPER = (
    "lr", "coupled_weight_decay", "grad_sign", "alpha", "beta", "clamp", "sign_before",
    "decay_factor", "one_minus_beta1", "beta2", "one_minus_beta2", "step_size",
    "bias_correction2_sqrt", "eps",
)
HAM_HYPER = ("lr", "grad_sign", "alpha", "beta", "clamp")

# Below this many elements a CPU kernel runs single-threaded (torch's own grain size):
# an OpenMP region per small tensor costs more than it saves, badly so on busy machines.
PARALLEL_MIN_NUMEL = 32768


def _ham_factor(new_param: Tensor, sign: Tensor, grad: Tensor, lr: Tensor, alpha: Tensor,
                beta: Tensor, clamp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    raw = -lr * (alpha * (sign * grad) + beta)
    exponent = torch.clamp(raw, -clamp, clamp)
    return new_param * torch.exp(exponent), raw, exponent


def sgd_update(param: Tensor, grad: Tensor, hyper: Tensor):
    """torch.optim.SGD without momentum, then HAM, in one pass."""
    lr, weight_decay, grad_sign, alpha, beta, clamp, sign_before = hyper.unbind(0)
    g = grad * grad_sign
    d = torch.where(weight_decay != 0, g + weight_decay * param, g)
    new_param = param - lr * d
    sign = torch.sign(torch.where(sign_before != 0, param, new_param))
    out, raw, exponent = _ham_factor(new_param, sign, g, lr, alpha, beta, clamp)
    param.copy_(out)
    return raw, exponent, clamp


def sgd_momentum_update(param: Tensor, grad: Tensor, momentum_buffer: Tensor, hyper: Tensor):
    """torch.optim.SGD with momentum (optionally Nesterov, dampening), then HAM."""
    (lr, weight_decay, grad_sign, alpha, beta, clamp, sign_before,
     momentum, one_minus_dampening, nesterov, first_step) = hyper.unbind(0)
    g = grad * grad_sign
    d = torch.where(weight_decay != 0, g + weight_decay * param, g)
    # torch starts the buffer as a copy of d, without dampening.
    buf = torch.where(first_step != 0, d, momentum_buffer * momentum + one_minus_dampening * d)
    direction = torch.where(nesterov != 0, d + momentum * buf, buf)
    new_param = param - lr * direction
    sign = torch.sign(torch.where(sign_before != 0, param, new_param))
    out, raw, exponent = _ham_factor(new_param, sign, g, lr, alpha, beta, clamp)
    momentum_buffer.copy_(buf)
    param.copy_(out)
    return raw, exponent, clamp


def adam_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, hyper: Tensor):
    """torch.optim.Adam / AdamW (no amsgrad), then HAM, in one pass."""
    (lr, coupled_weight_decay, grad_sign, alpha, beta, clamp, sign_before, decay_factor,
     one_minus_beta1, beta2, one_minus_beta2, step_size, bias_correction2_sqrt,
     eps) = hyper.unbind(0)
    g = grad * grad_sign
    d = torch.where(coupled_weight_decay != 0, g + coupled_weight_decay * param, g)
    m = torch.lerp(exp_avg, d, one_minus_beta1)
    v = exp_avg_sq * beta2 + one_minus_beta2 * (d * d)
    denom = torch.sqrt(v) / bias_correction2_sqrt + eps
    new_param = param * decay_factor - step_size * (m / denom)
    sign = torch.sign(torch.where(sign_before != 0, param, new_param))
    out, raw, exponent = _ham_factor(new_param, sign, g, lr, alpha, beta, clamp)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    param.copy_(out)
    return raw, exponent, clamp


def ham_update(param: Tensor, grad: Tensor, hyper: Tensor):
    """HAM* factor alone, after any base step (sign of the updated weight)."""
    lr, grad_sign, alpha, beta, clamp = hyper.unbind(0)
    out, raw, exponent = _ham_factor(param, torch.sign(param), grad * grad_sign, lr, alpha, beta, clamp)
    param.copy_(out)
    return raw, exponent, clamp


def ham_update_signed(param: Tensor, grad: Tensor, signs: Tensor, hyper: Tensor):
    """HAM factor alone with signs recorded before the base step (int8, variant HYP)."""
    lr, grad_sign, alpha, beta, clamp = hyper.unbind(0)
    out, raw, exponent = _ham_factor(param, signs.to(param.dtype), grad * grad_sign, lr, alpha,
                                     beta, clamp)
    param.copy_(out)
    return raw, exponent, clamp


def _accumulate(acc: Tensor, raw: Tensor, exponent: Tensor, clamp: Tensor) -> None:
    """acc (float64[3]) += [sum |exponent|, count(|raw exponent| >= clamp), max |exponent|]."""
    magnitude = exponent.abs()
    acc.copy_(torch.stack([
        acc[0] + magnitude.sum().to(acc.dtype),
        acc[1] + (raw.abs() >= clamp).sum().to(acc.dtype),
        torch.maximum(acc[2], magnitude.amax().to(acc.dtype)),
    ]))


def _without_outputs(kernel):
    # Returning the exponents would make the compiled graph write them to memory.
    def kernel_in_place(*tensors):
        kernel(*tensors)

    kernel_in_place.__name__ = kernel.__name__
    kernel_in_place.__qualname__ = kernel.__name__
    return kernel_in_place


def _with_diagnostics(kernel):
    def kernel_with_diagnostics(*args):
        *tensors, acc = args
        raw, exponent, clamp = kernel(*tensors)
        _accumulate(acc, raw, exponent, clamp)

    kernel_with_diagnostics.__name__ = kernel.__name__ + "_with_diagnostics"
    kernel_with_diagnostics.__qualname__ = kernel_with_diagnostics.__name__
    return kernel_with_diagnostics


_UPDATES = {
    "sgd": sgd_update,
    "sgd_momentum": sgd_momentum_update,
    "adam": adam_update,
    "ham": ham_update,
    "ham_signed": ham_update_signed,
}
KERNELS = {name: _without_outputs(fn) for name, fn in _UPDATES.items()}
_KERNELS_WITH_DIAGNOSTICS = {name: _with_diagnostics(fn) for name, fn in _UPDATES.items()}
_COMPILED: dict[tuple[str, bool, bool], object] = {}


def compiled_kernel(name: str, diagnostics: bool, serial: bool):
    """The torch.compile'd kernel ``name``; ``serial`` pins CPU code to one thread.

    Compiled lazily, once per process, with dynamic shapes: every tensor size
    reuses the same code. Variants with diagnostics append an ``acc`` argument.
    """
    key = (name, diagnostics, serial)
    fn = _COMPILED.get(key)
    if fn is None:
        eager = (_KERNELS_WITH_DIAGNOSTICS if diagnostics else KERNELS)[name]
        # A code object of its own per variant: dynamo caches compiled graphs (and counts
        # recompiles against its limit) per code object.
        label = f"{eager.__name__}_{'serial' if serial else 'parallel'}"
        eager = types.FunctionType(eager.__code__.replace(co_name=label, co_qualname=label), eager.__globals__,
                                   label, eager.__defaults__, eager.__closure__)
        options = {"cpp.threads": 1} if serial else None
        fn = torch.compile(eager, dynamic=True, fullgraph=True, options=options)
        _COMPILED[key] = fn
    return fn


def foreach_ham_(params: list[Tensor], grads: list[Tensor], signs: list[Tensor] | None, *,
                 lr, alpha: float, beta: float, clamp: float, maximize: bool,
                 acc: Tensor | None = None) -> None:
    """Multiply ``params`` in place by the HAM factor, with torch._foreach_* ops.

    ``signs``: int8 signs recorded before the base step (HYP), or None to use the
    signs of ``params`` as they are now (HYP*). ``acc``: optional float64[3]
    diagnostics accumulator on the params' device (see ``_accumulate``).
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
