"""HAM / SAM / build_optimizer: exact updates against per-tensor references, state, AMP, compile.

Tests that compile kernels (implementation="compiled", torch.compile of a
training step) are marked ``slow``: the first compile in a process takes 10-60 s
on a small CPU machine; later ones reuse inductor's on-disk cache.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import warnings

import pytest
import torch
from torch import nn

from ham_bench.optim import HAM, SAM, build_optimizer
from ham_bench.optim import FusedOptimizer, kernel_cache
from sparsifiers.config import ConfigError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LR = 0.05
ALPHA, BETA, CLAMP = 20.0, 1e-2, 5.0
SHAPES = [(6, 5), (3, 2, 3, 3), (5,), (4, 7)]
IMPLEMENTATIONS = [
    "foreach",
    pytest.param("compiled", marks=pytest.mark.slow),
]
# Bases that write into p.grad during their step; HAM must still use the raw gradient g:
# *_nesterov_foreach: torch's multi-tensor SGD adds momentum * buf into p.grad in place
# (nesterov, weight_decay == 0, not maximize); "grad_scaling": a user optimizer HAM does not know.
BASES = ["sgd", "adamw", "sam", "adam", "sgd_dampening_maximize", "sgd_nesterov_foreach", "sam_nesterov_foreach",
         "grad_scaling"]
VARIANTS = ["hyp_star", "hyp"]


class GradScaling(torch.optim.Optimizer):
    """A user optimizer HAM knows nothing about: SGD on 3 * g, scaling p.grad in place first."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(3.0)
                    p.add_(p.grad, alpha=-group["lr"])
        return loss


# ---- problem: params, a loss whose gradient depends on the weights (so SAM matters) -----------
def make_params(seed: int = 0, zeros: bool = False) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(0.5 * torch.randn(shape, generator=g)) for shape in SHAPES]
    if zeros:
        with torch.no_grad():
            for p in params:
                p.view(-1)[::3] = 0.0
    return params


def loss_fn(params, step: int, zeros: bool = False):
    g = torch.Generator().manual_seed(1000 + step)
    total = 0.0
    for p in params:
        a = 0.5 + torch.rand(p.shape, generator=g)
        b = torch.randn(p.shape, generator=g)
        if zeros:  # no gradient where the weight is exactly zero
            b = b * (p.detach() != 0)
        total = total + 0.5 * ((a * p) ** 2).sum() + (b * p).sum()
    return total


def make_base(name: str, params, lr: float = LR):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-3)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    if name == "adam":  # weight decay coupled into the gradient
        return torch.optim.Adam(params, lr=lr, weight_decay=1e-2)
    if name == "sgd_dampening_maximize":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, dampening=0.1, weight_decay=1e-3, maximize=True)
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=0.05, lr=lr, momentum=0.9, weight_decay=1e-3)
    if name == "sgd_nesterov_foreach":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=0, foreach=True)
    if name == "sam_nesterov_foreach":
        return SAM(params, torch.optim.SGD, rho=0.05, lr=lr, momentum=0.9, nesterov=True, weight_decay=0,
                   foreach=True)
    if name == "grad_scaling":
        return GradScaling(params, lr=lr)
    raise AssertionError(name)


def one_step(opt, params, step: int, zeros: bool = False, before=None, grads=None):
    """One optimizer step on loss_fn; ``grads`` (a list) receives copies of the gradients the
    base step gets as input (for SAM-style bases: the ones the closure leaves at w + e)."""
    def record():
        if grads is not None:
            grads[:] = [None if p.grad is None else p.grad.detach().clone() for p in params]

    opt.zero_grad()
    loss_fn(params, step, zeros).backward()
    if before is not None:
        before()
    if getattr(opt, "requires_closure", False):
        def closure():
            loss = loss_fn(params, step, zeros)
            loss.backward()
            record()
            return loss
        return opt.step(closure)
    record()
    return opt.step()


def reference_ham_(params, olds, variant, lr, alpha=ALPHA, beta=BETA, clamp=CLAMP, covered=None, maximize=False,
                   grads=None):
    """The update of methods.md, one tensor at a time (maximize: HAM descends -f like the base).

    ``grads``: the raw gradients the base step used (default: p.grad as it is now)."""
    with torch.no_grad():
        for i, (p, old) in enumerate(zip(params, olds)):
            grad = p.grad if grads is None else grads[i]
            if grad is None or not (covered(p) if covered else p.dim() >= 2):
                continue
            sign = torch.sign(p) if variant == "hyp_star" else torch.sign(old)
            grad = -grad if maximize else grad
            exponent = torch.clamp(-lr * (alpha * sign * grad + beta), -clamp, clamp)
            p.mul_(torch.exp(exponent))


def run_reference(base_name, variant, steps, lrs, zeros=False, **ham):
    """The plain base step, then the HAM formula with the raw gradient saved before the base saw it."""
    params = make_params(zeros=zeros)
    base = make_base(base_name, params)
    for step in range(steps):
        for group in base.param_groups:
            group["lr"] = lrs[step]
        olds = [p.detach().clone() for p in params]
        raw = []
        one_step(base, params, step, zeros, grads=raw)
        reference_ham_(params, olds, variant, lrs[step], maximize=base.param_groups[0].get("maximize", False),
                       grads=raw, **ham)
    return params


def run_ham(base_name, variant, implementation, steps, lrs, zeros=False, **ham):
    params = make_params(zeros=zeros)
    opt = HAM(make_base(base_name, params), variant=variant, implementation=implementation,
              **{"alpha": ALPHA, "beta": BETA, "clamp": CLAMP, **ham})
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[step]
        one_step(opt, params, step, zeros)
    return params, opt


def tolerance(implementation):
    # compiled kernels redo the base update in one pass: equal up to float32 rounding
    return {"rtol": 1e-6, "atol": 1e-7} if implementation == "foreach" else {"rtol": 1e-5, "atol": 2e-6}


# ---- the update ---------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("base_name", BASES)
def test_update_matches_per_tensor_reference(base_name, variant, implementation):
    lrs = [LR, 0.5 * LR, 0.25 * LR]  # changing lr: HAM must read the group's current lr
    expected = run_reference(base_name, variant, 3, lrs)
    got, _ = run_ham(base_name, variant, implementation, 3, lrs)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, **tolerance(implementation))
    # HAM really did something: the plain base optimizer ends elsewhere
    plain = make_params()
    base = make_base(base_name, plain)
    for step in range(3):
        for group in base.param_groups:
            group["lr"] = lrs[step]
        one_step(base, plain, step)
    assert not torch.allclose(plain[0], got[0], rtol=1e-3)
    if not base_name.startswith("sam"):  # SAM couples all weights through the gradient norm
        torch.testing.assert_close(plain[2], got[2], **tolerance(implementation))  # 1-D: not covered


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("base_name", BASES)
def test_zero_strength_is_bit_identical_to_base(base_name, implementation):
    lrs = [LR] * 3
    got, _ = run_ham(base_name, "hyp", implementation, 3, lrs, alpha=0.0, beta=0.0)
    plain = make_params()
    base = make_base(base_name, plain)
    for step in range(3):
        one_step(base, plain, step)
    for p, q in zip(plain, got):
        assert torch.equal(p, q)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("base_name", BASES)
def test_exact_zeros_stay_zero(base_name, variant, implementation):
    got, _ = run_ham(base_name, variant, implementation, 3, [LR] * 3, zeros=True)
    for p in got:
        zero = torch.zeros_like(p, dtype=torch.bool)
        zero.view(-1)[::3] = True
        assert torch.all(p[zero] == 0)
        assert torch.all(p[~zero] != 0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_clamp_bounds_the_factor(implementation):
    clamp = 2.0
    params = make_params()
    base_params = make_params()
    opt = HAM(torch.optim.SGD(params, lr=0.1), alpha=1e6, beta=0.0, clamp=clamp, implementation=implementation,
              diagnostics=True)
    base = torch.optim.SGD(base_params, lr=0.1)
    one_step(opt, params, 0)
    one_step(base, base_params, 0)
    for p, q in zip(params, base_params):
        if p.dim() < 2:
            continue
        log_factor = torch.log(p / q)
        torch.testing.assert_close(log_factor.abs(), torch.full_like(p, clamp), rtol=0, atol=1e-5)
    stats = opt.diagnostics()
    assert stats["ham_clamp_fraction"] == 1.0
    assert stats["ham_max_abs_exponent"] == pytest.approx(clamp)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_lr_scheduler_lr_is_used(implementation):
    def schedule(step):
        return [1.0, 0.3, 0.1][min(step, 2)]

    params = make_params()
    opt = HAM(make_base("sgd", params), alpha=ALPHA, beta=BETA, implementation=implementation)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    seen = []
    for step in range(3):
        seen.append(opt.param_groups[0]["lr"])
        one_step(opt, params, step)
        scheduler.step()
    assert seen == pytest.approx([LR, 0.3 * LR, 0.1 * LR])
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * LR)
    expected = run_reference("sgd", "hyp_star", 3, seen)
    for e, g in zip(expected, params):
        torch.testing.assert_close(g, e, **tolerance(implementation))


@pytest.mark.slow
@pytest.mark.parametrize("base_name", ["sgd", "adamw"])
def test_compiled_takes_channels_last_and_leaves_odd_tensors_to_foreach(base_name):
    def build(seed=0):
        g = torch.Generator().manual_seed(seed)
        return [
            nn.Parameter(torch.randn(4, 3, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)),
            nn.Parameter(torch.randn(5, 6, generator=g, dtype=torch.float64)),  # not float32: foreach path
            nn.Parameter(torch.randn(6, 5, generator=g).t()),  # transposed: foreach path
            nn.Parameter(torch.randn(7, generator=g)),
        ]

    results = {}
    for implementation in ("foreach", "compiled"):
        params = build()
        opt = HAM(make_base(base_name, params), alpha=ALPHA, beta=BETA, implementation=implementation)
        for step in range(3):
            opt.zero_grad()
            g = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype).to(memory_format=torch.channels_last) \
                    if p.dim() == 4 else torch.randn(p.shape, generator=g, dtype=p.dtype).as_strided(p.shape, p.stride())
            opt.step()
        results[implementation] = params
    assert results["compiled"][0].is_contiguous(memory_format=torch.channels_last)
    for e, g in zip(results["foreach"], results["compiled"]):
        torch.testing.assert_close(g, e, **tolerance("compiled"))


# ---- optimizer plumbing ----------------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("base_name", BASES)
def test_state_dict_round_trip_resumes_identically(base_name, implementation):
    params = make_params()
    opt = HAM(make_base(base_name, params), alpha=ALPHA, beta=BETA, variant="hyp", implementation=implementation)
    for step in range(2):
        one_step(opt, params, step)
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())
    assert saved["ham"]["alpha"] == ALPHA and saved["ham"]["variant"] == "hyp"
    for step in range(2, 4):
        one_step(opt, params, step)

    resumed = [nn.Parameter(p.clone()) for p in saved_params]
    fresh = HAM(make_base(base_name, resumed), alpha=1.0, beta=0.5, variant="hyp_star", implementation=implementation)
    fresh.load_state_dict(saved)
    assert (fresh.alpha, fresh.beta, fresh.variant) == (ALPHA, BETA, "hyp")
    assert fresh.param_groups is fresh.base_optimizer.param_groups
    assert fresh.state is fresh.base_optimizer.state
    for step in range(2, 4):
        one_step(fresh, resumed, step)
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)


def test_param_groups_state_and_defaults_are_the_base_objects():
    params = make_params()
    base = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    opt = HAM(base, implementation="foreach")
    assert opt.param_groups is base.param_groups
    assert opt.state is base.state
    assert opt.defaults is base.defaults
    assert opt.base_optimizer is base
    one_step(opt, params, 0)
    assert "momentum_buffer" in opt.state[params[0]]
    opt.state[params[0]]["momentum_buffer"].zero_()  # e.g. AC/DC's momentum reset
    assert base.state[params[0]]["momentum_buffer"].abs().sum() == 0
    opt.load_state_dict(opt.state_dict())  # torch replaces the base's list and dict here
    assert opt.param_groups is base.param_groups and opt.state is base.state

    sam = SAM(make_params(), torch.optim.SGD, lr=0.1, momentum=0.9)
    wrapped = HAM(sam, implementation="foreach")
    assert wrapped.param_groups is sam.param_groups is sam.base_optimizer.param_groups
    assert wrapped.state is sam.state is sam.base_optimizer.state
    assert wrapped.requires_closure and sam.requires_closure and not opt.requires_closure


def test_add_param_group_zero_grad_and_step_hooks():
    params = make_params()
    opt = HAM(torch.optim.SGD(params[:2], lr=0.1), alpha=ALPHA, beta=BETA, implementation="foreach")
    opt.add_param_group({"params": params[2:], "lr": 0.01, "ham": False})
    assert len(opt.base_optimizer.param_groups) == 2
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("save"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load"))
    untouched = params[3].detach().clone()
    one_step(opt, params, 0)
    assert calls == ["pre", "post"]
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "save", "load"]
    torch.testing.assert_close(params[3], untouched - 0.01 * params[3].grad)  # plain SGD: ham=False
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_group_overrides_filter_and_rmsprop_alpha():
    params = make_params()
    groups = [{"params": params[:2], "alpha": 5.0, "beta": 0.0}, {"params": params[2:]}]
    opt = HAM(torch.optim.SGD(groups, lr=LR), alpha=ALPHA, beta=BETA, implementation="foreach",
              param_filter=lambda p: p.shape != (4, 7))
    olds = [p.detach().clone() for p in params]
    one_step(opt, params, 0)
    expected = [nn.Parameter(o.clone()) for o in olds]
    base = torch.optim.SGD(expected, lr=LR)
    one_step(base, expected, 0)
    reference_ham_(expected[:2], olds[:2], "hyp_star", LR, alpha=5.0, beta=0.0)
    for e, g in zip(expected, params):  # params[3] (4, 7) is filtered out: plain SGD
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)

    # RMSprop has its own 'alpha' group key: HAM must not read it
    rms_params = make_params()
    rms = HAM(torch.optim.RMSprop(rms_params, lr=1e-3, alpha=0.99), alpha=ALPHA, beta=BETA)
    assert rms._group_settings(rms.param_groups[0]) == (True, ALPHA, BETA)


def test_bad_input_names_argument_and_allowed_values():
    params = make_params()
    with pytest.raises(ValueError, match="alpha"):
        HAM(torch.optim.SGD(params, lr=0.1), alpha=-1.0)
    with pytest.raises(ValueError, match="beta"):
        HAM(torch.optim.SGD(params, lr=0.1), beta=-1e-3)
    with pytest.raises(ValueError, match="clamp must be > 0"):
        HAM(torch.optim.SGD(params, lr=0.1), clamp=0.0)
    with pytest.raises(ValueError, match="variant must be one of .*hyp_star.*hyp"):
        HAM(torch.optim.SGD(params, lr=0.1), variant="hyperbolic")
    with pytest.raises(ValueError, match="implementation must be one of"):
        HAM(torch.optim.SGD(params, lr=0.1), implementation="triton")
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        HAM(params)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        HAM(torch.optim.SGD)
    with pytest.raises(ValueError, match="'alpha'"):
        HAM(torch.optim.SGD([{"params": params, "alpha": -2.0}], lr=0.1))
    with pytest.raises(TypeError, match="base_optimizer_cls"):
        SAM(params, "sgd", lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        SAM(params, torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        SAM(params, torch.optim.SGD, lr=0.1).step()


# ---- the raw gradient: bases that write into p.grad during their step (issue 11) -----------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_nesterov_foreach_sgd_five_steps_use_the_raw_gradient(variant, implementation):
    """The reported case: torch's multi-tensor SGD (nesterov, weight_decay=0) turns p.grad into
    g + momentum * buf; 5 steps with alpha=20, beta=0 must still follow the formula with g."""
    lrs = [LR] * 5
    expected = run_reference("sgd_nesterov_foreach", variant, 5, lrs, beta=0.0)
    got, _ = run_ham("sgd_nesterov_foreach", variant, implementation, 5, lrs, beta=0.0)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, **tolerance(implementation))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("base_name", ["sgd_nesterov_foreach", "sam_nesterov_foreach", "grad_scaling"])
def test_covered_grads_are_left_as_the_base_received_them(base_name, implementation):
    params = make_params()
    opt = HAM(make_base(base_name, params), alpha=ALPHA, beta=BETA, implementation=implementation)
    for step in range(2):
        raw = []
        one_step(opt, params, step, grads=raw)
        for p, g in zip(params, raw):
            if p.dim() >= 2:
                assert torch.equal(p.grad, g)
    if base_name == "sgd_nesterov_foreach":  # HAM shields only what it reads: biases keep what torch made
        assert not torch.equal(params[2].grad, raw[2])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("base_name", ["sgd_nesterov_foreach", "grad_scaling"])
def test_closure_gradient_is_the_raw_one(base_name, implementation):
    params = make_params()
    opt = HAM(make_base(base_name, params), alpha=ALPHA, beta=BETA, implementation=implementation)
    for step in range(3):
        def closure():
            opt.zero_grad()
            loss = loss_fn(params, step)
            loss.backward()
            return loss

        assert torch.isfinite(opt.step(closure))
    for e, g in zip(run_reference(base_name, "hyp_star", 3, [LR] * 3), params):
        torch.testing.assert_close(g, e, **tolerance(implementation))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_nesterov_foreach_sgd_raw_gradient_for_float64_and_bfloat16(variant, implementation):
    """Tensors the compiled kernels do not take go "base first, then HAM" on the compiled path too."""
    def build():
        g = torch.Generator().manual_seed(0)
        return [nn.Parameter(0.5 * torch.randn(6, 5, generator=g, dtype=torch.float64)),
                nn.Parameter((0.5 * torch.randn(4, 7, generator=g)).bfloat16()),
                nn.Parameter(0.5 * torch.randn(3, 2, 3, 3, generator=g)),  # float32: fused on the compiled path
                nn.Parameter(torch.randn(5, generator=g))]

    def base(params):
        return torch.optim.SGD(params, lr=LR, momentum=0.9, nesterov=True, weight_decay=0, foreach=True)

    expected, got = build(), build()
    ref, opt = base(expected), HAM(base(got), alpha=ALPHA, beta=BETA, variant=variant, implementation=implementation)
    for step in range(4):
        olds = [p.detach().clone() for p in expected]
        raw = []
        one_step(ref, expected, step, grads=raw)
        reference_ham_(expected, olds, variant, LR, grads=raw)
        one_step(opt, got, step)
    for e, g in zip(expected, got):
        exact = e.dtype != torch.bfloat16  # bf16: foreach ops round in another order than the reference
        torch.testing.assert_close(g, e, **(tolerance(implementation) if exact else {"rtol": 2e-2, "atol": 1e-2}))


def _changes_grad(optimizer_cls, kwargs, steps=3) -> tuple[bool, bool]:
    """(whether HAM's rule expects writes into p.grad, whether the real step wrote into it)."""
    from ham_bench.optim.ham_foreach import may_write_grad

    g = torch.Generator().manual_seed(0)
    p = nn.Parameter(torch.randn(4, 3, generator=g))
    opt = optimizer_cls([p], **kwargs)
    wrote = False
    for step in range(steps):
        p.grad = torch.randn(4, 3, generator=g)
        raw = p.grad.clone()
        if getattr(opt, "requires_closure", False):
            opt.first_step(zero_grad=False)
            opt.second_step()
        else:
            opt.step()
        wrote = wrote or not torch.equal(p.grad, raw)
    return may_write_grad(opt, opt.param_groups[0]), wrote


def _flag_grid(**choices):
    keys = list(choices)
    return [dict(zip(keys, values)) for values in itertools.product(*choices.values())]


_DECAY_MAX = {"weight_decay": [0.0, 0.1], "maximize": [False, True]}
_TORCH_BASES = [
    (torch.optim.SGD, _flag_grid(momentum=[0.0, 0.9], nesterov=[False, True], dampening=[0.0, 0.1], **_DECAY_MAX)),
    (torch.optim.Adam, _flag_grid(amsgrad=[False, True], **_DECAY_MAX)),
    (torch.optim.AdamW, _flag_grid(amsgrad=[False, True], **_DECAY_MAX)),
    (torch.optim.RMSprop, _flag_grid(momentum=[0.0, 0.9], centered=[False, True], **_DECAY_MAX)),
    (torch.optim.Adagrad, _flag_grid(**_DECAY_MAX)),
    (torch.optim.Adadelta, _flag_grid(**_DECAY_MAX)),
    (torch.optim.Adamax, _flag_grid(**_DECAY_MAX)),
    (torch.optim.ASGD, _flag_grid(**_DECAY_MAX)),
    (torch.optim.NAdam, _flag_grid(decoupled_weight_decay=[False, True], **_DECAY_MAX)),
    (torch.optim.RAdam, _flag_grid(decoupled_weight_decay=[False, True], **_DECAY_MAX)),
    (torch.optim.Rprop, _flag_grid(maximize=[False, True])),
    (torch.optim.Adafactor, _flag_grid(**_DECAY_MAX)),
    (torch.optim.Muon, _flag_grid(nesterov=[False, True], weight_decay=[0.0, 0.1])),
]
_FUSED_ON_CPU = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad)


@pytest.mark.parametrize("optimizer_cls, grid", _TORCH_BASES, ids=[cls.__name__ for cls, _ in _TORCH_BASES])
def test_grad_write_rule_matches_installed_torch(optimizer_cls, grid):
    """HAM copies a gradient only where the base writes into it: exactly, on every path torch runs on CPU."""
    paths = [{}] if optimizer_cls is torch.optim.Muon else [{"foreach": False}, {"foreach": True}, {}]
    if optimizer_cls in _FUSED_ON_CPU:
        paths.append({"fused": True})
    checked = 0
    for flags in grid:
        if optimizer_cls is torch.optim.SGD and flags["nesterov"] and (flags["momentum"] == 0 or flags["dampening"]):
            continue  # torch rejects these
        for path in paths:
            kwargs = {"lr": 0.01, **flags, **path}
            expected, wrote = _changes_grad(optimizer_cls, kwargs)
            assert expected == wrote, kwargs
            if optimizer_cls is torch.optim.SGD:
                sam_expected, sam_wrote = _changes_grad(SAM, {"base_optimizer_cls": optimizer_cls, **kwargs})
                assert sam_expected == sam_wrote == wrote, kwargs
            checked += 1
    assert checked >= len(grid)
    if optimizer_cls is torch.optim.SGD:  # the one writer torch has: multi-tensor nesterov without decay
        assert _changes_grad(optimizer_cls, {"lr": 0.01, "momentum": 0.9, "nesterov": True, "foreach": True}) \
            == (True, True)
    assert _changes_grad(GradScaling, {"lr": 0.01}) == (True, True)  # unknown: always assumed to write


def test_lbfgs_evaluates_its_closure_and_leaves_its_gradients():
    """LBFGS needs the closure inside its step (it re-evaluates it): HAM hands it over."""
    from ham_bench.optim.ham_foreach import may_write_grad

    params = make_params()
    opt = HAM(torch.optim.LBFGS(params, lr=0.1, max_iter=3), alpha=ALPHA, beta=BETA, implementation="foreach")
    assert not may_write_grad(opt.base_optimizer, opt.param_groups[0])
    last = []

    def closure():
        opt.zero_grad()
        loss = loss_fn(params, 0)
        loss.backward()
        last[:] = [p.grad.clone() for p in params]
        return loss

    assert torch.isfinite(opt.step(closure))
    assert len(last) == len(params) and all(torch.equal(p.grad, g) for p, g in zip(params, last))


# ---- GradScaler ---------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grad_scaler_skip_and_unscaled_gradients(implementation):
    params = make_params()
    opt = HAM(make_base("sgd", params), alpha=ALPHA, beta=BETA, implementation=implementation)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)

    # inf gradient: neither the base step nor HAM may touch anything
    before = [p.detach().clone() for p in params]
    scaler.scale(loss_fn(params, 0)).backward()
    params[1].grad[0, 0, 0, 0] = math.inf
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 9
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    assert len(opt.state) == 0
    opt.zero_grad()

    # finite: same as an unscaled reference step
    scaler.scale(loss_fn(params, 0)).backward()
    scaler.step(opt)
    scaler.update()
    expected = run_reference("sgd", "hyp_star", 1, [LR])
    for e, g in zip(expected, params):
        torch.testing.assert_close(g, e, **tolerance(implementation))


# ---- diagnostics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_diagnostics_match_reference(implementation):
    clamp = 0.2
    params = make_params()
    opt = HAM(torch.optim.SGD(params, lr=LR), alpha=ALPHA, beta=BETA, clamp=clamp,
              implementation=implementation, diagnostics=True)
    exponents = []
    for step in range(2):
        opt.zero_grad()
        loss_fn(params, step).backward()
        with torch.no_grad():
            for p in params:
                if p.dim() >= 2:
                    half = p - LR * p.grad
                    exponents.append((-LR * (ALPHA * torch.sign(half) * p.grad + BETA)).flatten())
        opt.step()
    raw = torch.cat(exponents)
    stats = opt.diagnostics(reset=True)
    assert stats["ham_steps"] == 2
    assert stats["ham_mean_abs_exponent"] == pytest.approx(raw.abs().clamp(max=clamp).mean().item(), rel=1e-5)
    assert stats["ham_clamp_fraction"] == pytest.approx((raw.abs() >= clamp).double().mean().item())
    assert 0 < stats["ham_clamp_fraction"] < 1
    assert stats["ham_max_abs_exponent"] == pytest.approx(clamp)
    assert opt.diagnostics() == {}  # reset
    assert HAM(torch.optim.SGD(make_params(), lr=LR)).diagnostics() == {}  # off by default


# ---- SAM ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_manual_reference(adaptive):
    rho = 0.5 if adaptive else 0.05
    params = make_params()
    sam = SAM(params, torch.optim.SGD, rho=rho, adaptive=adaptive, lr=LR, momentum=0.9)
    manual = make_params()
    base = torch.optim.SGD(manual, lr=LR, momentum=0.9)
    for step in range(2):
        loss = one_step(sam, params, step)
        assert torch.isfinite(loss)

        base.zero_grad()
        loss_fn(manual, step).backward()
        with torch.no_grad():
            weights = [p.detach().clone() for p in manual]
            scaled = [(p.abs() if adaptive else 1.0) * p.grad for p in manual]
            norm = torch.sqrt(sum((s ** 2).sum() for s in scaled))
            for p in manual:
                p.add_(rho * (p ** 2 if adaptive else 1.0) * p.grad / (norm + 1e-12))
        base.zero_grad()
        loss_fn(manual, step).backward()
        with torch.no_grad():
            for p, w in zip(manual, weights):
                p.copy_(w)
        base.step()
    for p, q in zip(manual, params):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert "momentum_buffer" in sam.state[params[0]]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("base_name", ["sam", "sam_nesterov_foreach"])
def test_ham_sam_two_step_api_equals_closure_step(base_name, variant, implementation):
    a, b = make_params(), make_params()
    diagnostics = implementation == "foreach"  # (the compiled kernels with diagnostics would compile anew)
    opt_a, opt_b = (HAM(make_base(base_name, params), alpha=ALPHA, beta=BETA, variant=variant,
                        implementation=implementation, diagnostics=diagnostics) for params in (a, b))
    for step in range(3):
        one_step(opt_a, a, step)
        opt_b.zero_grad()
        loss_fn(b, step).backward()
        opt_b.first_step(zero_grad=True)
        loss_fn(b, step).backward()
        opt_b.second_step(zero_grad=True)
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    if diagnostics:
        assert opt_a.diagnostics()["ham_steps"] == opt_b.diagnostics()["ham_steps"] == 3
    # and both use the gradient at w + e that SAM's base step received, not what the base made of it
    for e, g in zip(run_reference(base_name, variant, 3, [LR] * 3), b):
        torch.testing.assert_close(g, e, **tolerance(implementation))


def test_sam_state_dict_round_trip():
    params = make_params()
    sam = SAM(params, torch.optim.AdamW, rho=0.1, adaptive=True, lr=1e-2)
    one_step(sam, params, 0)
    state = copy.deepcopy(sam.state_dict())
    assert state["sam"] == {"rho": 0.1, "adaptive": True}
    assert state["param_groups"][0]["rho"] == 0.1
    other_params = [nn.Parameter(p.detach().clone()) for p in params]
    other = SAM(other_params, torch.optim.AdamW, lr=1e-2)
    other.load_state_dict(state)
    assert other.rho == 0.1 and other.adaptive
    one_step(sam, params, 1)
    one_step(other, other_params, 1)
    for p, q in zip(params, other_params):
        assert torch.equal(p, q)


# ---- compile ----------------------------------------------------------------------------------
def test_compile_failure_in_auto_falls_back_to_foreach(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(kernel_cache, "compiled_kernel", broken)
    monkeypatch.setattr(kernel_cache, "_WARMED", {})
    expected, _ = run_ham("sgd", "hyp_star", "foreach", 2, [LR] * 2)
    with pytest.warns(RuntimeWarning, match="foreach"):
        got, opt = run_ham("sgd", "hyp_star", "auto", 2, [LR] * 2)
    assert opt._compile_failed
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    with pytest.raises(RuntimeError, match="no compiler"):
        run_ham("sgd", "hyp_star", "compiled", 1, [LR])


def _train_step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.detach()


@pytest.fixture(scope="module")
def compiled_train_step():
    return torch.compile(_train_step)  # one compiled function shared by every test using it


@pytest.mark.slow
@pytest.mark.parametrize("nesterov_foreach", [False, True])  # True: the base writes into p.grad
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_compile_training_step_matches_eager(compiled_train_step, variant, nesterov_foreach):
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        sgd = {"nesterov": True, "foreach": True} if nesterov_foreach else {}
        opt = HAM(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, **sgd), alpha=5.0, beta=1e-3,
                  variant=variant)
        return model, opt

    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 4
    eager_model, eager_opt = build()
    compiled_model, compiled_opt = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            expected = _train_step(eager_model, eager_opt, x, y)
            got = compiled_train_step(compiled_model, compiled_opt, x, y)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager_model[0].weight, build()[0][0].weight)


# ---- factory --------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.threshold = nn.Parameter(torch.zeros(1, 1))  # 2-D, like a learned threshold


def test_build_optimizer_groups_and_wrapping():
    from omegaconf import OmegaConf

    net = _Net()
    cfg = OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4})
    opt = build_optimizer(net, cfg, {"enabled": False},
                          extra_groups=[{"params": [net.threshold], "weight_decay": 1e-3, "ham": False}])
    assert type(opt) is FusedOptimizer and type(opt.base_optimizer) is torch.optim.SGD  # HAM off: fused bookkeeping
    decay, no_decay, extra = opt.param_groups
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.fc.weight)}
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {id(net.conv.bias), id(net.bn.weight), id(net.bn.bias),
                                                   id(net.fc.bias)}
    assert extra["params"] == [net.threshold] and extra["ham"] is False and extra["weight_decay"] == 1e-3
    assert decay["nesterov"] and decay["momentum"] == 0.9

    ham = build_optimizer(net, {"name": "sam", "base": "adamw", "lr": 1e-3, "rho": 0.1, "betas": [0.9, 0.99]},
                          {"enabled": True, "variant": "hyp", "alpha": 20.0, "beta": 1e-3, "clamp": 5.0,
                           "implementation": "foreach", "diagnostics": True})
    assert isinstance(ham, HAM) and isinstance(ham.base_optimizer, SAM)
    assert isinstance(ham.base_optimizer.base_optimizer, torch.optim.AdamW)
    assert ham.variant == "hyp" and ham.alpha == 20.0 and ham.diagnostics_enabled
    assert ham.param_groups[0]["betas"] == (0.9, 0.99) and ham.param_groups[0]["rho"] == 0.1
    assert ham.requires_closure

    no_norm_rule = build_optimizer(list(net.named_parameters()),
                                   {"name": "adamw", "lr": 1e-3, "no_decay_bias_norm": False})
    assert len(no_norm_rule.param_groups) == 1 and no_norm_rule.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("cfg, ham_cfg, message", [
    ({"name": "sgd", "lr": -1}, None, r"optimizer\.lr must be > 0, got -1"),
    ({"name": "rmsprop", "lr": 0.1}, None, r"optimizer\.name must be one of \[sgd, adamw, sam\]"),
    ({"name": "sgd", "lr": 0.1, "momentun": 0.9}, None, r"unknown key\(s\) momentun"),
    ({"name": "sgd", "lr": 0.1, "nesterov": True}, None, r"optimizer\.nesterov"),
    ({"name": "sgd", "lr": 0.1, "momentum": 2}, None, r"optimizer\.momentum must be in \[0, 1\), got 2"),
    ({"name": "sam", "base": "lion", "lr": 0.1}, None, r"optimizer\.base must be one of \[sgd, adamw\]"),
    ({"name": "adamw", "lr": 0.1, "betas": [0.9, 1.5]}, None, r"optimizer\.betas must be in \[0, 1\)"),
    ({"name": "sgd", "lr": "fast"}, None, r"optimizer\.lr must be a number"),
    ({"name": "sgd", "lr": 0.1}, {"variant": "hyper"}, r"ham\.variant must be one of \[hyp_star, hyp\]"),
    ({"name": "sgd", "lr": 0.1}, {"alpha": -1.0}, r"ham\.alpha must be >= 0"),
    ({"name": "sgd", "lr": 0.1}, {"clamp": 0}, r"ham\.clamp must be > 0"),
    ({"name": "sgd", "lr": 0.1}, {"enabled": True, "alhpa": 1.0}, r"ham has unknown key\(s\) alhpa"),
])
def test_build_optimizer_bad_values(cfg, ham_cfg, message):
    with pytest.raises(ConfigError, match=message):
        build_optimizer(_Net(), cfg, ham_cfg)
