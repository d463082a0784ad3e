"""Sign-In (NeurIPS 2025): theta = m * w with periodic re-balancing, on top of a masked method.

Gradient flow on (m, w) conserves gamma = m^2 - w^2 and moves theta with the
inverse metric m^2 + w^2 = sqrt(gamma^2 + 4 theta^2); noise and weight decay
shrink gamma, so every period the pair is re-balanced to gamma = 1 with theta
unchanged. Sign-In only changes the geometry: WHICH weights are masked is
decided by the inner method (Random PaI, AC/DC or RigL: the "+Sign-In" rows).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import torch
from torch import nn

from sparsifiers.base import Sparsifier
from sparsifiers.config import ConfigError, choice, number
from sparsifiers.masked import MaskedSparsifier, MaskedTensors
from sparsifiers.optimizer_state import reset_state
from sparsifiers.registry import build_sparsifier, register_sparsifier
from sparsifiers.selection import LayerSelection
from sparsifiers.reparameterization import (FactorTensors, add_product, pin_masked_factors, rebalance_,
                                            remove_reparameterizations)

log = logging.getLogger("ham_bench")

SHARED_KEYS = ("sparsity", "distribution", "dense_first", "dense_last", "power_scale", "seed")


@register_sparsifier("signin")
class SignIn(Sparsifier):
    """Sign-In (NeurIPS 2025) over an inner masked method; ``sparsifier=signin`` is Random PaI + Sign-In.

    Composition: ``inner`` names the method that owns the masks (any masked
    method: ``random``, ``acdc``, ``rigl``, ``snip``, ``synflow``, ``gmp``,
    ``imp``, ``lrr``, ``set``, ``mest``, or ``dense``; a name, or a mapping
    such as the method's own config with ``name``/``_target_``) and
    ``inner_kwargs`` adds keyword arguments for it. Methods that
    reparameterize their weights themselves (``str``, ``pilot``, ``cs``,
    ``spred``, ``nm``) are refused with a ConfigError naming ``sparsifier.inner``.
    The inner method's LR position and weight rewinds (IMP, LRR) pass
    through ``schedule_position`` / ``rewinds_weights``. The shared keys ``sparsity``, ``distribution``,
    ``dense_first``, ``dense_last``, ``power_scale`` and ``seed`` set on
    Sign-In (not None) override the inner method's, so
    ``sparsifier.sparsity=0.8`` reaches it. Every hook delegates to the inner
    method; Sign-In adds the reparameterization and the re-balancing.

    What the inner method sees: Sign-In injects ``FactorTensors`` as its
    ``tensors`` before it attaches, so its ``tensors.get(key)`` is the factor
    ``w`` and its ``tensors.reset_entries`` resets the state of both m and w:
    masks, gradient masks and zero-init act on w (masked entries:
    w = 0, hence theta = 0) and state resets on both factors. Magnitude
    criteria (AC/DC's top-k, RigL's drop) rank |w|, which at equal gamma is a
    strictly increasing function of |theta| (w^2 = (sqrt(1 + 4 theta^2) - 1) / 2
    at gamma = 1): the ranking is exactly theta's right after a re-balance
    (every epoch boundary by default) and approximate in between (RigL's
    mid-epoch updates; the mean gamma drifts by at most ~2 % in an epoch
    on the Fashion-MNIST MLP at weight decay 5e-4). Gradients are w.r.t. w,
    i.e. m * dL/dtheta; masked entries are held at m = 1 with zero optimizer state for m (``pin_masked_factors``),
    so RigL's growth scores at inactive entries are exactly |dL/dtheta|, and
    a regrown weight starts balanced at theta = 0.

    Choices (config keys, ``configs/sparsifier/signin.yaml``):

    - ``rebalance_period`` (default 1) in ``rebalance_unit`` (``epoch``,
      default, or ``step``): the paper's period is not published; every epoch
      is our default. The re-balance runs in ``after_step`` of the period's
      last step, before the inner method's ``after_step`` (so AC/DC, which
      compresses there at phase boundaries, ranks freshly balanced w); theta
      is unchanged, so evaluation and sign flips do not see it.
    - ``reset_momentum_on_rebalance`` (default false): the optimizer state of
      m and w is kept across a re-balance (not published either); true resets
      it as if the optimizer were fresh (``optimizer_state.reset_state``).
    - Re-balancing targets gamma = 1 exactly as the paper writes it:
      ``m = sqrt((1 + sqrt(1 + 4 theta^2)) / 2)``, ``w = theta / m``; theta is
      kept up to one rounding of the product (relative 1e-7 in fp32).
    - Only the inner method's masked layers are reparameterized (a
      kept-dense first conv / last linear stays a plain weight); that doubles
      their parameters (and their optimizer state). m and w are ordinary
      parameters: they get the base optimizer's weight decay (which is what
      shrinks gamma) and HAM like any >= 2-D weight.

    The forward weight is ``layer.weight = m * w`` (a ``parametrize``
    parametrization), so training, evaluation, sparsity and sign flips all
    use the merged weight; ``effective_weights()`` returns it.
    ``reparameterization.plain_state_dict(model)`` gives a state dict of the
    plain architecture with m * w merged (export), ``merge()`` turns the model
    back into a plain one in place (end of training: the optimizer's factors are gone afterwards).
    ``extra_metrics()`` adds ``signin_rebalances`` and ``signin_gamma_mean``
    (mean m^2 - w^2 after the epoch's last step, before its re-balance) to
    the inner method's.
    """

    name = "signin"
    reparameterizes_weights = True

    def __init__(self, inner: str | Mapping[str, Any] | Sparsifier = "random",
                 inner_kwargs: Mapping[str, Any] | None = None, rebalance_period: int = 1,
                 rebalance_unit: str = "epoch", reset_momentum_on_rebalance: bool = False,
                 sparsity: float | None = None, distribution: str | None = None, dense_first: bool | None = None,
                 dense_last: bool | None = None, power_scale: float | None = None, seed: int | None = None):
        self.rebalance_period = int(number("rebalance_period", rebalance_period, int, low=1))
        self.rebalance_unit = choice("rebalance_unit", rebalance_unit, ("epoch", "step"))
        shared = {"sparsity": sparsity, "distribution": distribution, "dense_first": dense_first,
                  "dense_last": dense_last, "power_scale": power_scale, "seed": seed}
        self.inner = build_inner(inner, inner_kwargs, {k: v for k, v in shared.items() if v is not None})
        super().__init__()
        self.selection = self.inner.selection  # the inner method's layers and sparsity are Sign-In's
        self.name = f"{self.inner.name}+signin"
        self.reset_momentum_on_rebalance = bool(reset_momentum_on_rebalance)
        self.factors: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        self.rebalances = 0
        self.last_gamma_mean: float | None = None
        self._epoch_end_gamma: torch.Tensor | None = None

    # ---- set-up -----------------------------------------------------------------
    def attach(self, model: nn.Module, context) -> None:
        super().attach(model, context)
        for key in self.masked_keys:
            self.factors[key] = add_product(self.layers[key.rsplit(".", 1)[0]])
        if isinstance(self.inner, MaskedSparsifier):  # injection: the inner method masks w
            self.inner.tensors = FactorTensors(self.layers, self.factors)
        self.inner.attach(model, context)
        self.rebalance()  # entries the inner method masked at attach: theta = 0 -> m = 1, w = 0
        self.rebalances = 0  # count the scheduled ones only
        pin_masked_factors(self.factors, self.inner.masks(), self.optimizer)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return self.inner.parameter_groups()

    def bind_optimizer(self, optimizer) -> None:
        super().bind_optimizer(optimizer)
        self.inner.bind_optimizer(optimizer)

    # ---- declared properties: the inner method's ------------------------------------
    @property
    def unused_parameters_under_ddp(self) -> bool:
        return self.inner.unused_parameters_under_ddp

    def needs_dense_gradient(self, step: int) -> bool:
        return self.inner.needs_dense_gradient(step)

    def skips_optimizer_step(self, step: int) -> bool:
        return self.inner.skips_optimizer_step(step)

    def trains_dense(self, step: int) -> bool:
        return self.inner.trains_dense(step)

    def schedule_warnings(self) -> list[str]:
        return self.inner.schedule_warnings()

    def schedule_position(self, step: int) -> int:
        return self.inner.schedule_position(step)

    def rewinds_weights(self, step: int) -> bool:
        return self.inner.rewinds_weights(step)

    # ---- per step ----------------------------------------------------------------
    def mask_gradients(self) -> None:
        self.inner.mask_gradients()  # on w; m's gradient g * w is already 0 where w = 0

    def before_step(self, step: int, dense_gradients=None) -> None:
        self.inner.before_step(step, dense_gradients)

    def after_step(self, step: int) -> None:
        # Re-balance BEFORE the inner method's own after_step, which may re-mask by magnitude (AC/DC
        # compresses there at phase boundaries): its |w| ranking then is exactly theta's.
        if self.rebalance_unit == "step":
            if (step + 1) % self.rebalance_period == 0:
                self.rebalance()
        elif (step + 1) % self.context.steps_per_epoch == 0:  # the last step of an epoch
            self._epoch_end_gamma = self.gamma_sum()  # before its re-balance; read in on_epoch_end (no sync here)
            if ((step + 1) // self.context.steps_per_epoch) % self.rebalance_period == 0:
                self.rebalance()
        self.inner.after_step(step)
        pin_masked_factors(self.factors, self.inner.masks(), self.optimizer)

    # ---- per epoch ---------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.inner.on_epoch_start(epoch)
        pin_masked_factors(self.factors, self.inner.masks(), self.optimizer)

    def on_epoch_end(self, epoch: int, stats: dict[str, float] | None = None) -> None:
        gamma = self.gamma_sum() if self.rebalance_unit == "step" else self._epoch_end_gamma
        self.last_gamma_mean = self._mean(gamma)
        self.inner.on_epoch_end(epoch, stats)
        pin_masked_factors(self.factors, self.inner.masks(), self.optimizer)
        log.info("Sign-In epoch %d: mean gamma %.4f at the end of the epoch (before its re-balance), "
                 "%d re-balances so far", epoch + 1, self.last_gamma_mean, self.rebalances)

    @torch.no_grad()
    def rebalance(self) -> None:
        """Set every pair to m^2 - w^2 = 1 keeping m * w (no host sync)."""
        for m, w in self.factors.values():
            rebalance_(m, w, 1.0)
            if self.reset_momentum_on_rebalance:
                reset_state(self.optimizer, (m, w))
        self.rebalances += 1

    @torch.no_grad()
    def gamma_sum(self) -> torch.Tensor | None:
        """Sum of m^2 - w^2 over every factor pair, on the device (None without factors)."""
        if not self.factors:
            return None
        return sum((m * m - w * w).sum(dtype=torch.float64) for m, w in self.factors.values())

    def _mean(self, gamma_sum) -> float:
        total = sum(m.numel() for m, _ in self.factors.values())
        return float(gamma_sum) / total if total and gamma_sum is not None else 0.0

    def gamma_mean(self) -> float:
        """Mean m^2 - w^2 now (a host sync)."""
        return self._mean(self.gamma_sum())

    # ---- reports and export ------------------------------------------------------
    def masks(self) -> dict[str, torch.Tensor]:
        return self.inner.masks()

    def masked_tensors(self) -> dict[str, torch.Tensor]:
        return self.inner.masked_tensors()

    def extra_metrics(self) -> dict[str, Any]:
        return {**self.inner.extra_metrics(), "signin_rebalances": self.rebalances,
                "signin_gamma_mean": self.last_gamma_mean}

    def target_densities(self) -> dict[str, float]:
        return self.inner.target_densities()

    def merge(self) -> None:
        """Replace every m * w by one plain weight Parameter, in place; training with this sparsifier ends."""
        remove_reparameterizations(self.model)
        self.factors = {}
        if isinstance(self.inner, MaskedSparsifier):
            self.inner.tensors = MaskedTensors(self.layers)

    # ---- checkpoints -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "rebalances": self.rebalances,
                "last_gamma_mean": self.last_gamma_mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
        self.rebalances = int(state.get("rebalances", 0))
        self.last_gamma_mean = state.get("last_gamma_mean")
        pin_masked_factors(self.factors, self.inner.masks(), self.optimizer)


def build_inner(inner, inner_kwargs: Mapping[str, Any] | None, shared: Mapping[str, Any]) -> Sparsifier:
    """The inner masked method from a name, a config mapping or an instance; ``shared`` keys win."""
    if isinstance(inner, Sparsifier):
        built = inner
        if shared:
            given = {**dataclasses.asdict(built.selection), **shared}
            built.selection = LayerSelection.from_settings(given, {}, built.distributions)
    else:
        if isinstance(inner, str):
            cfg: dict[str, Any] = {"name": inner}
        elif isinstance(inner, Mapping):
            cfg = dict(inner)
        else:
            raise ConfigError(f"sparsifier.inner must be a method name or a config mapping, got {inner!r}")
        cfg.update(dict(inner_kwargs or {}))
        cfg.update(shared)
        built = build_sparsifier(cfg)
    if built.reparameterizes_weights:
        raise ConfigError(f"sparsifier.inner={getattr(built, 'name', inner)!r} reparameterizes its weights itself; "
                         "Sign-In composes with masked methods (random, acdc, rigl, snip, synflow, gmp, imp, lrr, "
                         "set, mest) or dense")
    return built
