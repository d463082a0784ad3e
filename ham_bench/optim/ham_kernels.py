"""Update math of the fused optimizer steps: HAM (Hyperbolic Aware Minimization, ICLR 2026) and its bookkeeping.

Two implementations of HAM's update, used by :class:`ham_bench.optim.HAM`:

* ``foreach_ham_`` (``ham_foreach``): the multiplicative step as ``torch._foreach_*``
  passes after the base optimizer's own ``step()``. Exact, needs no compiler.
* Per-tensor kernels compiled with ``torch.compile(dynamic=True)`` on flat 1-D
  aliases of each tensor's memory (``kernel_cache``), described by a
  :class:`KernelSpec`. Kinds ``sgd`` / ``sgd_momentum`` / ``adam`` do the base
  update of ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` and, with ``factor``,
  HAM's factor in ONE pass over memory; ``ham`` / ``ham_signed`` apply only the
  factor after any other base step. All hyper-parameters, the learning rate
  included, arrive in one small float32 tensor, so LR schedules and
  per-parameter step counts never recompile.

The training engine's bookkeeping rides along in the same pass (a fused kind
reads the old weight anyway): ``mask`` (0/1 as uint8, in the weight's layout)
multiplies the gradient before the update and the new weight after it, i.e.
exactly what gradient masking after backward and re-masking after the step
do, and ``flips`` adds to a 1-element int64 slot the number of weights whose
sign went from + to - or - to + in this update (both signs nonzero: pruning
to zero or growth from zero is not a flip; counted with comparisons and an
int32 sum). Masks come as uint8, a view of the bool mask: inductor's CPU code
loads bool tensors several times slower than uint8 ones.

Kernels with a reduction (flips, diagnostics) write the new weight through a
second alias of its memory (``out_alias``: the last tensor argument before
``hyper``), which the compiler does not know aliases the weight it reads:
told that a reduction reads the weight the kernel updates in place, inductor
writes the new weights to a temporary and copies them back in a second loop
(on ResNet-18's 11M weights, one CPU thread, that made an SGD-momentum step
with a flip count 3x slower, the temporary page-faulting in every call). Each
element is read before it is written within one iteration of the single fused
loop, which ``kernel_cache.warm`` checks on every such kernel before use.
With diagnostics, the flip count carries a term that is always true but makes
inductor schedule it with the diagnostics' reductions, in the same loop (not
in a second one, which doubled the step).

Rounding: a base-only SGD kernel computes every ``c + alpha * b`` of torch's
SGD as one fused multiply-add (``inductor_prims.fma``), as ATen's CPU ``add``
does, so it is bit for bit ``torch.optim.SGD`` on CPU; the others round each
product and sum (float32 rounding away from torch's Adam(W)).

The update, with g the raw gradient (negated when the base group maximizes,
masked when a mask is given):

    exponent = clamp(-lr * (alpha * sign * g + beta), -clamp, clamp)
    theta    = theta_half * exp(exponent)

``sign`` is sign(theta_half) for HYP* and sign(theta before the base step) for HYP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch._inductor import inductor_prims

__all__ = ["ADAM_HYPER", "FUSED_KINDS", "HAM_HYPER", "KernelSpec", "SGD_HYPER", "SGD_MOMENTUM_HYPER",
           "kernel_function", "state_arity"]

# Order of the scalars packed into each kind's ``hyper`` tensor.
SGD_HYPER = ("lr", "weight_decay", "grad_sign", "alpha", "beta", "clamp", "sign_before")
SGD_MOMENTUM_HYPER = SGD_HYPER + ("momentum", "one_minus_dampening", "nesterov", "first_step")
ADAM_HYPER = ("lr", "coupled_weight_decay", "grad_sign", "alpha", "beta", "clamp", "sign_before", "decay_factor",
              "one_minus_beta1", "beta2", "one_minus_beta2", "step_size", "bias_correction2_sqrt", "eps")
HAM_HYPER = ("lr", "grad_sign", "alpha", "beta", "clamp")
HYPER = {"sgd": SGD_HYPER, "sgd_momentum": SGD_MOMENTUM_HYPER, "adam": ADAM_HYPER, "ham": HAM_HYPER,
         "ham_signed": HAM_HYPER}
FUSED_KINDS = ("sgd", "sgd_momentum", "adam")  # base update + (optional) factor + bookkeeping
_STATE_ARITY = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "ham": 0, "ham_signed": 1}  # ham_signed: int8 signs


@dataclass(frozen=True)
class KernelSpec:
    """One compiled kernel variant. Arguments, in order:
    ``param, grad, *state, [mask], [flips], [param_out], hyper, [acc]``.

    ``state``: the momentum buffer (``sgd_momentum``), exp_avg and exp_avg_sq
    (``adam``), the int8 signs taken before the base step (``ham_signed``).
    ``param_out``: the alias the new weight is written through (``out_alias``).
    ``acc``: float64[3] diagnostics accumulator (``diagnostics``; only with the factor).
    """

    kind: str
    factor: bool = True
    mask: bool = False
    flips: bool = False
    diagnostics: bool = False
    serial: bool = False
    out_alias: bool = False

    def __post_init__(self):
        if self.kind not in HYPER:
            raise ValueError(f"unknown kernel kind {self.kind!r}")
        if self.kind not in FUSED_KINDS and (self.mask or self.flips or not self.factor):
            raise ValueError(f"{self.kind}: only fused kinds take masks and flip counts")
        if self.diagnostics and not self.factor:
            raise ValueError("diagnostics describe HAM's factor: they need factor=True")

    @property
    def reduces(self) -> bool:
        return self.flips or self.diagnostics

    @property
    def label(self) -> str:
        flags = [name for name in ("mask", "flips", "diagnostics", "out_alias") if getattr(self, name)]
        return "_".join([self.kind, "ham" if self.factor else "base", *flags, "serial" if self.serial else "parallel"])


def state_arity(kind: str) -> int:
    return _STATE_ARITY[kind]


def _ham_factor(new_param: Tensor, sign: Tensor, grad: Tensor, lr: Tensor, alpha: Tensor,
                beta: Tensor, clamp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    raw = -lr * (alpha * (sign * grad) + beta)
    exponent = torch.clamp(raw, -clamp, clamp)
    return new_param * torch.exp(exponent), raw, exponent


def _fma(a, b, c):
    """a * b + c rounded once: what ATen's CPU kernels compute for ``c.add(a, alpha=b)``."""
    return inductor_prims.fma(a, b, c)


def _axpy(exact: bool):
    """``c + alpha * b`` as torch's eager ``add(alpha=)`` rounds it (exact) or as two roundings (HAM's kernels)."""
    return (lambda c, b, alpha: _fma(b, alpha, c)) if exact else (lambda c, b, alpha: c + alpha * b)


def _sgd(param, d, state, h, add):
    return add(param, d, -h["lr"]), ()


def _sgd_momentum(param, d, state, h, add):
    # torch starts the buffer as a copy of d, without dampening.
    buf = torch.where(h["first_step"] != 0, d, add(state[0] * h["momentum"], d, h["one_minus_dampening"]))
    direction = torch.where(h["nesterov"] != 0, add(d, buf, h["momentum"]), buf)
    return add(param, direction, -h["lr"]), (buf,)


def _adam(param, d, state, h, add):
    m = torch.lerp(state[0], d, h["one_minus_beta1"])
    v = state[1] * h["beta2"] + h["one_minus_beta2"] * (d * d)
    denom = torch.sqrt(v) / h["bias_correction2_sqrt"] + h["eps"]
    return param * h["decay_factor"] - h["step_size"] * (m / denom), (m, v)


_BASE = {"sgd": _sgd, "sgd_momentum": _sgd_momentum, "adam": _adam}


def _accumulate(acc: Tensor, raw: Tensor, exponent: Tensor, clamp: Tensor) -> None:
    """acc (float64[3]) += [sum |exponent|, count(|raw exponent| >= clamp), max |exponent|]."""
    magnitude = exponent.abs()
    acc.copy_(torch.stack([
        acc[0] + magnitude.sum().to(acc.dtype),
        acc[1] + (raw.abs() >= clamp).sum(dtype=torch.int32).to(acc.dtype),
        torch.maximum(acc[2], magnitude.amax().to(acc.dtype)),
    ]))


def kernel_function(spec: KernelSpec):
    """The eager update function of ``spec`` (writes its outputs in place, returns nothing)."""
    arity = _STATE_ARITY[spec.kind]
    names = HYPER[spec.kind]

    def update(*args):
        param, grad, *rest = args
        state, rest = rest[:arity], rest[arity:]
        mask = rest.pop(0) if spec.mask else None
        flips = rest.pop(0) if spec.flips else None
        param_out = rest.pop(0) if spec.out_alias else param
        hyper = rest.pop(0)
        acc = rest.pop(0) if spec.diagnostics else None
        h = dict(zip(names, hyper.unbind(0)))
        g = grad * h["grad_sign"]
        if mask is not None:
            g = g * mask
        if spec.kind in _BASE:
            add = _axpy(exact=not spec.factor and spec.kind != "adam")
            decay = h["weight_decay"] if spec.kind != "adam" else h["coupled_weight_decay"]
            d = torch.where(decay != 0, add(g, param, decay), g)
            new_param, new_state = _BASE[spec.kind](param, d, state, h, add)
            sign_source = torch.where(h["sign_before"] != 0, param, new_param)
        else:  # the factor alone, after another base step: param is theta_half already
            new_param, new_state = param, ()
            sign_source = state[0].to(param.dtype) if spec.kind == "ham_signed" else param
        raw = exponent = None
        half = new_param  # theta_half: the factor keeps its sign
        if spec.factor:
            sign = torch.sign(sign_source) if spec.kind != "ham_signed" else sign_source
            new_param, raw, exponent = _ham_factor(new_param, sign, g, h["lr"], h["alpha"], h["beta"], h["clamp"])
        if mask is not None:
            new_param = new_param * mask
        if flips is not None:
            # the new weight has theta_half's sign wherever it is nonzero (exp > 0, mask 0 or 1)
            flipped = (((param > 0) & (half < 0)) | ((param < 0) & (half > 0))) & (new_param != 0)
            if exponent is not None and acc is not None:
                flipped = flipped & (exponent.abs() >= 0)  # always true (NaN: theta_half is NaN too); see above
            flips.copy_(flips + flipped.sum(dtype=torch.int32))
        if spec.kind in _BASE:
            for tensor, value in zip(state, new_state):
                tensor.copy_(value)
        param_out.copy_(new_param)
        if acc is not None:
            _accumulate(acc, raw, exponent, h["clamp"])

    update.__name__ = update.__qualname__ = spec.label
    return update
